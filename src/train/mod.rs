//! Learning from history: `train` reads an environment's spans, metric
//! points and logs back from Elasticsearch, feeds them in time order through
//! the same detectors the sidecar runs, and writes the sidecar's snapshot
//! format; `backfill` does the same over a past range and pushes the anomaly
//! events it finds to the aggregator, marked as backfilled.
//!
//! Reading and scoring overlap: one task per signal fetches pages into a
//! small bounded channel while a blocking thread merges the three streams by
//! time and scores them.

pub mod doc;
pub mod exclude;
pub mod job;
pub mod reader;
pub mod settings;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use self::doc::{LogRec, PointRec, SpanRec};
use self::exclude::{ExcludeError, Windows};
use self::reader::{Paging, SignalReader, Target};
use self::settings::TrainSettings;
use crate::detect::interval::AnomalyEvent;
use crate::detect::snapshot::SnapshotError;
use crate::detect::ANOMALOUS_SCORE;
use crate::export::stream_name;
use crate::pipeline::process::Detectors;
use crate::telemetry::Signal;

/// One document, ready for its detector.
#[derive(Debug, Clone, PartialEq)]
pub enum Rec {
    Span(SpanRec),
    Point(PointRec),
    Log(LogRec),
}

impl Rec {
    /// The time the stream is ordered by (the document's `@timestamp`).
    pub fn time_ns(&self) -> u64 {
        match self {
            Rec::Span(s) => s.start_ns,
            Rec::Point(p) => p.time_ns,
            Rec::Log(l) => l.time_ns,
        }
    }
}

/// Why training or a backfill stopped; each names what to fix.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("{0}")]
    Config(String),
    #[error("cannot reach Elasticsearch at {target}: {reason}; check --es (or the urls / cloud_id of the environment's target) and that the server is up")]
    Unreachable { target: String, reason: String },
    #[error("Elasticsearch at {target} rejected the credentials (401: {reason}); check the API key in {key_hint}")]
    Unauthorized {
        target: String,
        key_hint: String,
        reason: String,
    },
    #[error("the API key may not read {index} at {target} (403: {reason}); give it the read-only role of README \"Learn from history\" (indices privileges read and view_index_metadata on traces-*-<environment>, metrics-*-<environment>, logs-*-<environment>)")]
    Forbidden {
        target: String,
        index: String,
        reason: String,
    },
    #[error("could not {what} on {index} (status {status}): {reason}")]
    Request {
        what: String,
        index: String,
        status: u16,
        reason: String,
    },
    #[error("page {page} of {index} came back incomplete: {why}; stopped rather than learn from partial history (run again; raise train.request_timeout or lower train.page_size if it repeats)")]
    PartialPage {
        index: String,
        page: u64,
        why: String,
    },
    #[error(
        "the point in time on {index} expired between two pages ({reason}); raise train.keep_alive"
    )]
    PointInTimeExpired { index: String, reason: String },
    #[error("index {index} maps {field} as {found}, expected {expected}: it does not hold otel-anomaly documents; point train at the sidecar's data streams (export.elasticsearch.dataset) or fix the index template")]
    Mapping {
        index: String,
        field: String,
        found: String,
        expected: String,
    },
    #[error("mixed mappings for {field}: {good} but {bad} (expected {expected}); reindex or delete the odd index, or move it out of the data stream")]
    MixedMappings {
        field: String,
        good: String,
        bad: String,
        expected: String,
    },
    #[error("document {id} in {index} cannot be read: {why}; fix or delete it, or set train.skip_bad_documents: true to skip (and count) such documents")]
    BadDocument {
        index: String,
        id: String,
        why: String,
    },
    #[error("no documents of environment {environment:?} in {indices} between {from} and {to}; check --environment, --since/--from/--to and export.elasticsearch.dataset (the sidecar writes <signal>-<dataset>-<environment>)")]
    Empty {
        environment: String,
        indices: String,
        from: String,
        to: String,
    },
    #[error(transparent)]
    Exclude(#[from] ExcludeError),
    #[error("model {path}: {source}")]
    Model { path: String, source: SnapshotError },
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("push to the aggregator: {0}")]
    Push(String),
}

/// What to read.
#[derive(Debug, Clone)]
pub struct Job {
    pub environment: String,
    /// `<signal>-<dataset>-<environment>`.
    pub dataset: String,
    pub from_ns: u64,
    pub to_ns: u64,
    pub settings: TrainSettings,
    pub exclude: Windows,
    /// Draw a progress bar (only drawn when stderr is a terminal).
    pub progress: bool,
}

/// What a run did.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Documents read per signal (traces, metrics, logs).
    pub read: [u64; 3],
    /// Documents inside `--exclude` windows, not learned.
    pub excluded: u64,
    /// Documents the detectors judged anomalous (kept out of the baseline).
    pub anomalous: u64,
    /// Unreadable documents skipped (with `train.skip_bad_documents`).
    pub skipped: u64,
    /// Interval-level events the span detector raised.
    pub events: u64,
    /// How each index was paged (index, paging); missing indices are absent.
    pub paging: Vec<(String, Paging)>,
    /// Indices that did not exist.
    pub missing: Vec<String>,
    /// Wall time of the whole run.
    pub wall: Duration,
    /// Of which: checking mappings and opening the points in time (or nothing, for scrolls).
    pub opening: Duration,
    /// Time spent in the detectors.
    pub scoring: Duration,
    /// Time the scorer waited for pages (reading not hidden behind scoring).
    pub waiting: Duration,
    /// (span keys, metric series, log services) learned.
    pub state: (usize, usize, usize),
}

impl Summary {
    /// Documents read.
    pub fn total(&self) -> u64 {
        self.read.iter().sum()
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secs = self.wall.as_secs_f64().max(1e-9);
        write!(
            f,
            "read {} documents ({} spans, {} metric points, {} logs) in {:.1} s ({:.0} documents/s; opening the searches {:.1} s, scoring {:.1} s, waiting for pages {:.1} s); {} in excluded windows, {} judged anomalous by the detectors, {} skipped as unreadable",
            self.total(),
            self.read[0],
            self.read[1],
            self.read[2],
            secs,
            self.total() as f64 / secs,
            self.opening.as_secs_f64(),
            self.scoring.as_secs_f64(),
            self.waiting.as_secs_f64(),
            self.excluded,
            self.anomalous,
            self.skipped,
        )
    }
}

/// Now, in ns since the epoch.
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn rfc3339(ns: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_nanos(ns)).to_string()
}

enum Msg {
    Total(u64),
    Page(Vec<Rec>),
    Failed(TrainError),
}

const SIGNALS: [Signal; 3] = [Signal::traces, Signal::metrics, Signal::logs];

fn signal_slot(s: Signal) -> usize {
    match s {
        Signal::traces => 0,
        Signal::metrics => 1,
        Signal::logs => 2,
    }
}

/// Reads the job's history and feeds it through `detectors` in time order;
/// `on_event` gets each span interval event and each record judged
/// anomalous (for backfill). Returns what was done.
pub async fn run(
    target: &Target,
    job: &Job,
    detectors: Arc<Detectors>,
    mut on_record: impl FnMut(&Rec, &crate::detect::Verdict) + Send + 'static,
    mut on_event: impl FnMut(AnomalyEvent) + Send + 'static,
) -> Result<Summary, TrainError> {
    let started = Instant::now();
    let mut summary = Summary::default();
    let skip_bad = job.settings.skip_bad_documents;
    let mut receivers: Vec<Option<flume::Receiver<Msg>>> = vec![None, None, None];
    let mut tasks = Vec::new();
    let mut names = Vec::new();
    for signal in SIGNALS {
        let index = stream_name(signal, &job.dataset, &job.environment);
        names.push(index.clone());
        let Some(mut reader) = SignalReader::open(
            target,
            signal,
            &index,
            (job.from_ns, job.to_ns),
            &job.settings,
            skip_bad,
        )
        .await?
        else {
            tracing::info!(index = %index, "index not found; nothing of this signal to learn");
            summary.missing.push(index);
            continue;
        };
        summary.paging.push((index.clone(), reader.paging()));
        // Two pages in flight per signal: reading runs ahead of scoring, bounded.
        let (tx, rx) = flume::bounded::<Msg>(2);
        receivers[signal_slot(signal)] = Some(rx);
        tasks.push(tokio::spawn(async move {
            let mut told_total = false;
            loop {
                let page = reader.next_page().await;
                let msg = match page {
                    Ok(p) if p.is_empty() => break,
                    Ok(p) => {
                        if !told_total {
                            told_total = true;
                            if tx.send_async(Msg::Total(reader.total)).await.is_err() {
                                break;
                            }
                        }
                        Msg::Page(p)
                    }
                    Err(e) => Msg::Failed(e),
                };
                let failed = matches!(msg, Msg::Failed(_));
                if tx.send_async(msg).await.is_err() || failed {
                    break;
                }
            }
            let skipped = reader.skipped;
            reader.close().await;
            skipped
        }));
    }
    summary.opening = started.elapsed();
    let progress = if job.progress {
        ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr())
    } else {
        ProgressBar::hidden()
    };
    progress.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:40} {human_pos}/{human_len} documents ({per_sec}, ETA {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let exclude = job.exclude.clone();
    let bar = progress.clone();
    let scored = tokio::task::spawn_blocking(move || {
        score_merged(
            receivers,
            &detectors,
            &exclude,
            &bar,
            &mut on_record,
            &mut on_event,
        )
    })
    .await
    .map_err(|e| TrainError::Config(format!("scoring thread failed: {e}")))?;
    let mut skipped = 0;
    for t in tasks {
        skipped += t.await.unwrap_or(0);
    }
    progress.finish_and_clear();
    let scored = scored?;
    summary.read = scored.read;
    summary.excluded = scored.excluded;
    summary.anomalous = scored.anomalous;
    summary.events = scored.events;
    summary.scoring = scored.scoring;
    summary.waiting = scored.waiting;
    summary.skipped = skipped;
    summary.wall = started.elapsed();
    if summary.total() == 0 && summary.excluded == 0 {
        return Err(TrainError::Empty {
            environment: job.environment.clone(),
            indices: names.join(", "),
            from: rfc3339(job.from_ns),
            to: rfc3339(job.to_ns),
        });
    }
    Ok(summary)
}

#[derive(Default)]
struct Scored {
    read: [u64; 3],
    excluded: u64,
    anomalous: u64,
    events: u64,
    scoring: Duration,
    waiting: Duration,
}

/// Scores one point read back from a document as the live path scores it
/// (`Processor::metric_points`): its value (a histogram's mean) on its own
/// series and, for a histogram, exponential histogram or summary, the
/// p50 / p95 / p99 series through `Detectors::histogram` / `quantiles`
/// under the same derived keys. The most anomalous verdict is the point's.
pub fn score_point(detectors: &Detectors, p: &PointRec) -> Option<crate::detect::Verdict> {
    let mut verdict = detectors.point(p.series, p.time_ns, p.value);
    let mut derived = Vec::new();
    match &p.quantiles {
        Some(doc::QuantileSrc::Summary(values)) => {
            detectors.quantiles(p.series, p.time_ns, *values, &mut derived);
        }
        Some(q) => {
            if let Some(obs) = q.obs() {
                if let Err(e) = detectors.histogram(p.series, p.time_ns, &obs, &mut derived) {
                    tracing::debug!(metric = %p.metric, error = %e, "histogram document gives no quantiles; its mean is still learned");
                }
            }
        }
        None => {}
    }
    for d in derived {
        verdict = match verdict {
            Some(v) if v.score >= d.score => Some(v),
            _ => Some(d),
        };
    }
    verdict
}

/// Merges the signals' pages by time and scores them (a blocking thread).
fn score_merged(
    receivers: Vec<Option<flume::Receiver<Msg>>>,
    detectors: &Detectors,
    exclude: &Windows,
    progress: &ProgressBar,
    on_record: &mut dyn FnMut(&Rec, &crate::detect::Verdict),
    on_event: &mut dyn FnMut(AnomalyEvent),
) -> Result<Scored, TrainError> {
    let mut out = Scored::default();
    let mut buffers: Vec<VecDeque<Rec>> = vec![VecDeque::new(); 3];
    let mut open: Vec<Option<flume::Receiver<Msg>>> = receivers;
    let mut events = Vec::new();
    let mut in_window = false;
    loop {
        // Every signal still open needs a record at its head to compare times.
        for slot in 0..3 {
            while buffers[slot].is_empty() {
                let Some(rx) = &open[slot] else { break };
                let waited = Instant::now();
                let msg = rx.recv();
                out.waiting += waited.elapsed();
                match msg {
                    Ok(Msg::Total(n)) => progress.inc_length(n),
                    Ok(Msg::Page(p)) => buffers[slot].extend(p),
                    Ok(Msg::Failed(e)) => return Err(e),
                    Err(_) => open[slot] = None,
                }
            }
        }
        let next = (0..3)
            .filter(|s| !buffers[*s].is_empty())
            .min_by_key(|s| buffers[*s].front().map(Rec::time_ns).unwrap_or(u64::MAX));
        let Some(slot) = next else { break };
        let Some(rec) = buffers[slot].pop_front() else {
            break;
        };
        out.read[slot] += 1;
        progress.inc(1);
        let t = rec.time_ns();
        if exclude.find(t).is_some() {
            out.excluded += 1;
            in_window = true;
            continue;
        }
        let started = Instant::now();
        if in_window {
            // The excluded stretch is a gap, not an empty stretch to judge.
            detectors.resume();
            in_window = false;
        }
        let verdict = match &rec {
            Rec::Span(s) => Some(detectors.span(&s.obs(), &mut events)),
            Rec::Point(p) => score_point(detectors, p),
            Rec::Log(l) => Some(detectors.log(&l.service, l.time_ns, l.severity_number)),
        };
        out.scoring += started.elapsed();
        if let Some(v) = verdict {
            if v.score >= ANOMALOUS_SCORE {
                out.anomalous += 1;
                on_record(&rec, &v);
            }
        }
        for e in events.drain(..) {
            out.events += 1;
            on_event(e);
        }
    }
    Ok(out)
}

/// The ns range `[now - since, now)`.
pub fn range_since(since: Duration) -> (u64, u64) {
    let to = now_ns();
    (to.saturating_sub(since.as_nanos() as u64), to)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
    use opentelemetry_proto::tonic::metrics::v1::exponential_histogram_data_point::Buckets as ExpBuckets;
    use opentelemetry_proto::tonic::metrics::v1::summary_data_point::ValueAtQuantile;
    use opentelemetry_proto::tonic::metrics::v1::{
        metric, ExponentialHistogram, ExponentialHistogramDataPoint, Histogram, HistogramDataPoint,
        Metric, ResourceMetrics, ScopeMetrics, Summary, SummaryDataPoint,
    };
    use opentelemetry_proto::tonic::resource::v1::Resource;

    use super::doc::{PointSrc, QuantileSrc};
    use super::*;
    use crate::config::Settings;
    use crate::detect::histogram::{
        derived_series_key, BucketMemory, Buckets, HistogramObs, BUCKET_STATE_SUFFIX, QUANTILES,
    };
    use crate::detect::keys::{key_hash, KeyHash, MapSnapshot};
    use crate::detect::metric::SeriesState;
    use crate::detect::snapshot;
    use crate::pipeline::process::Processor;
    use crate::pipeline::{AnomalyFeed, Payload};
    use crate::telemetry::Metrics;

    const T0: u64 = 1_800_000_000_000_000_000;
    const STEP: u64 = 10_000_000_000;
    const BOUNDS: [f64; 5] = [10.0, 25.0, 50.0, 100.0, 250.0];

    fn kv(k: &str, v: &str) -> KeyValue {
        KeyValue {
            key: k.into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(v.into())),
            }),
            ..Default::default()
        }
    }

    fn request(name: &str, data: metric::Data) -> Payload {
        Payload::Metrics(ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                // Not in alphabetical order: the key depends on the order.
                resource: Some(Resource {
                    attributes: vec![kv("service.name", "cart"), kv("host.name", "n1")],
                    ..Default::default()
                }),
                scope_metrics: vec![ScopeMetrics {
                    metrics: vec![Metric {
                        name: name.into(),
                        unit: "ms".into(),
                        data: Some(data),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        })
    }

    fn live_key(name: &str, attrs: &[KeyValue]) -> KeyHash {
        let resource = Resource {
            attributes: vec![kv("service.name", "cart"), kv("host.name", "n1")],
            ..Default::default()
        };
        let res = crate::export::document::encode_resource(Some(&resource), "");
        let mut a = Vec::new();
        crate::export::document::attributes(&mut a, attrs);
        key_hash(&[&res, name.as_bytes(), &a])
    }

    fn metric_keys(bytes: &[u8]) -> std::collections::BTreeSet<u64> {
        let body = snapshot::decode(bytes, Some("prod")).expect("snapshot decodes");
        let mut keys = std::collections::BTreeSet::new();
        for shard in &body.metrics {
            let m: MapSnapshot<SeriesState> = snapshot::decode_map(shard).expect("shard");
            keys.extend(m.entries.iter().map(|e| e.0));
        }
        keys
    }

    /// Histogram, exponential-histogram and summary points go through the
    /// live path (`Processor`), their documents are read back as `train`
    /// reads them: same series and derived keys, same quantile values, and
    /// detector state byte for byte the same.
    #[test]
    fn histogram_documents_read_back_give_the_live_quantile_series() {
        let settings = Settings::default();
        let live = Processor::new(
            &settings,
            "otel",
            Arc::new(Metrics::default()),
            Arc::new(AnomalyFeed::default()),
        );
        let trained = Detectors::new(&settings);
        let attrs = vec![kv("route", "/pay"), kv("method", "POST")];
        let mut docs = Vec::new();
        // (doc obs, live obs) memories of the explicit histogram, to compare values.
        let (mut mem_doc, mut mem_live) = (BucketMemory::default(), BucketMemory::default());
        let mut compared = 0;
        let mut cum = [0u64; 6];
        let mut sum = 0.0;
        for i in 0..40u64 {
            // A reset half way (new start time, counts from zero).
            let start = if i < 20 { T0 } else { T0 + 20 * STEP };
            if i == 20 {
                cum = [0; 6];
                sum = 0.0;
            }
            let new = [
                i % 3,
                50 + i % 7,
                30 + (i * 5) % 11,
                5 + i % 4,
                i % 2,
                i % 5,
            ];
            for (c, n) in cum.iter_mut().zip(new) {
                *c += n;
            }
            sum += 40.0 * new.iter().sum::<u64>() as f64 + 0.1 * i as f64;
            let hp = HistogramDataPoint {
                attributes: attrs.clone(),
                start_time_unix_nano: start,
                time_unix_nano: T0 + i * STEP,
                count: cum.iter().sum(),
                sum: Some(sum),
                bucket_counts: cum.to_vec(),
                explicit_bounds: BOUNDS.to_vec(),
                min: Some(0.5),
                max: Some(400.0 + i as f64 / 3.0),
                ..Default::default()
            };
            let live_obs = HistogramObs {
                buckets: Buckets::Explicit {
                    bounds: &hp.explicit_bounds,
                    counts: &hp.bucket_counts,
                },
                cumulative: true,
                start_ns: hp.start_time_unix_nano,
                min: hp.min,
                max: hp.max,
            };
            let d = live.process(request(
                "http.server.duration",
                metric::Data::Histogram(Histogram {
                    data_points: vec![hp.clone()],
                    aggregation_temporality: 2,
                }),
            ));
            assert_eq!(d.len(), 1);
            let src: PointSrc = serde_json::from_slice(&d[0].source).expect("point document");
            let rec = src.into_rec().expect("histogram document reads back");
            assert_eq!(rec.series, live_key("http.server.duration", &attrs));
            let q = rec
                .quantiles
                .as_ref()
                .expect("histogram has a quantile source");
            let doc_obs = q.obs().expect("explicit histogram obs");
            assert_eq!(doc_obs, live_obs, "point {i}");
            let a = mem_doc.interval(&doc_obs).expect("doc interval");
            let b = mem_live.interval(&live_obs).expect("live interval");
            assert_eq!(a, b, "point {i}");
            if let (Some(a), Some(b)) = (a, b) {
                for (q, _) in QUANTILES {
                    let (x, y) = (
                        a.quantile(q, doc_obs.min, doc_obs.max),
                        b.quantile(q, live_obs.min, live_obs.max),
                    );
                    assert!(x.is_some() && x == y, "point {i} q{q}: {x:?} vs {y:?}");
                }
                compared += 1;
            }
            docs.push(d[0].source.clone());

            // A cumulative exponential histogram with both sides and a zero
            // bucket (zero threshold 0: the document does not store it).
            let mut pos = vec![0u64; 12];
            for (k, c) in pos.iter_mut().enumerate() {
                *c = (i + 1) * (3 + (k as u64 * 7 + i) % 5);
            }
            let ep = ExponentialHistogramDataPoint {
                attributes: attrs.clone(),
                start_time_unix_nano: T0,
                time_unix_nano: T0 + i * STEP,
                count: pos.iter().sum::<u64>() + 3 * (i + 1) + 2 * (i + 1),
                sum: Some(1000.0 * (i + 1) as f64),
                scale: 3,
                zero_count: 2 * (i + 1),
                positive: Some(ExpBuckets {
                    offset: 40,
                    bucket_counts: pos,
                }),
                negative: Some(ExpBuckets {
                    offset: -4,
                    bucket_counts: vec![i + 1, 2 * (i + 1)],
                }),
                ..Default::default()
            };
            docs.extend(
                live.process(request(
                    "rpc.duration",
                    metric::Data::ExponentialHistogram(ExponentialHistogram {
                        data_points: vec![ep],
                        aggregation_temporality: 2,
                    }),
                ))
                .into_iter()
                .map(|d| d.source),
            );

            let sp = SummaryDataPoint {
                attributes: attrs.clone(),
                start_time_unix_nano: T0,
                time_unix_nano: T0 + i * STEP,
                count: 100 * (i + 1),
                sum: 4000.0 * (i + 1) as f64,
                quantile_values: [(0.5, 40.0), (0.95, 90.0), (0.99, 120.0)]
                    .iter()
                    .map(|&(quantile, v)| ValueAtQuantile {
                        quantile,
                        value: v + (i % 4) as f64,
                    })
                    .collect(),
                ..Default::default()
            };
            docs.extend(
                live.process(request(
                    "db.duration",
                    metric::Data::Summary(Summary {
                        data_points: vec![sp],
                    }),
                ))
                .into_iter()
                .map(|d| d.source),
            );
        }
        assert_eq!(
            compared, 39,
            "every point but the first has an interval (a reset is one)"
        );

        for source in &docs {
            let src: PointSrc = serde_json::from_slice(source).expect("point document");
            let rec = src.into_rec().expect("document reads back");
            if rec.metric == "db.duration" {
                assert!(matches!(rec.quantiles, Some(QuantileSrc::Summary(_))));
            }
            score_point(&trained, &rec);
        }

        let want = live.detectors().snapshot("prod", 0);
        let got = trained.snapshot("prod", 0);
        let keys = metric_keys(&want);
        for name in ["http.server.duration", "rpc.duration", "db.duration"] {
            let s = live_key(name, &attrs);
            assert!(keys.contains(&s), "{name}: mean series");
            for (_, what) in QUANTILES {
                assert!(
                    keys.contains(&derived_series_key(s, what)),
                    "{name}: {what} series"
                );
            }
            let buckets = derived_series_key(s, BUCKET_STATE_SUFFIX);
            assert_eq!(
                keys.contains(&buckets),
                name != "db.duration",
                "{name}: bucket memory"
            );
        }
        assert_eq!(keys.len(), 3 * 4 + 2);
        assert_eq!(
            metric_keys(&got),
            keys,
            "train builds the live path's series"
        );
        // Every metric series' state (order within a shard aside: the maps
        // iterate in hash order), and the overflow states.
        let states = |b: &[u8]| {
            let body = snapshot::decode(b, Some("prod")).expect("snapshot decodes");
            let mut m = std::collections::BTreeMap::new();
            let mut overflow = Vec::new();
            for shard in &body.metrics {
                let s: MapSnapshot<SeriesState> = snapshot::decode_map(shard).expect("shard");
                for (k, v, seen) in s.entries {
                    m.insert(k, format!("{v:?} {seen}"));
                }
                overflow.push(format!("{:?}", s.overflow));
            }
            (m, overflow)
        };
        let (w, g) = (states(&want), states(&got));
        for (k, v) in &w.0 {
            assert_eq!(
                g.0.get(k),
                Some(v),
                "series {k}: trained state differs from the live path's"
            );
        }
        assert!(g == w);
    }
}
