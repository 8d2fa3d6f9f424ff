//! The `train` and `backfill` commands on top of [`super::run`]: which
//! Elasticsearch target to read, what to write, where events go.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::exclude::Windows;
use super::reader::Target;
use super::{now_ns, run, Job, Rec, Summary, TrainError};
use crate::config::{read_secret, Config, ElasticsearchSettings, EsCredentials, EsTarget};
use crate::detect::Verdict;
use crate::pipeline::process::Detectors;
use crate::pipeline::AnomalyNote;
use crate::push::proto::AnomalyEvent as PushEvent;
use crate::telemetry::Signal;

/// Target options given on the command line; they replace the configured
/// target's address and key (credentials only from a file, never a flag value).
#[derive(Debug, Clone, Default)]
pub struct TargetOverrides {
    /// `--es URL`.
    pub url: Option<String>,
    /// `--cloud-id ID`.
    pub cloud_id: Option<String>,
    /// `--api-key-file FILE`.
    pub api_key_file: Option<PathBuf>,
    /// `--dataset NAME`.
    pub dataset: Option<String>,
}

/// The target `environment` is read from, and the option holding its key (for messages).
pub fn resolve_target(
    cfg: &Config,
    environment: &str,
    o: &TargetOverrides,
) -> Result<(EsTarget, String), TrainError> {
    let configured = cfg.es_target(environment).cloned();
    let from_map = cfg.es_targets.contains_key(environment);
    let given = o.url.is_some() || o.cloud_id.is_some();
    let mut target = match (configured, given) {
        (Some(t), _) => t,
        (None, true) => EsTarget {
            settings: ElasticsearchSettings {
                urls: Vec::new(),
                ..ElasticsearchSettings::default()
            },
            credentials: None,
        },
        (None, false) => {
            return Err(TrainError::Config(format!(
                "no Elasticsearch target for environment {environment:?}: give --es URL (or --cloud-id), or set export.elasticsearch or export.elasticsearch_targets.{environment} in the config file"
            )))
        }
    };
    let mut key_hint = if from_map {
        format!("export.elasticsearch_targets.{environment}.api_key_file")
    } else {
        "export.elasticsearch.api_key_file".to_string()
    };
    if let Some(url) = &o.url {
        let parsed =
            url::Url::parse(url).map_err(|e| TrainError::Config(format!("--es {url:?}: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(TrainError::Config(format!(
                "--es {url:?}: scheme must be http or https"
            )));
        }
        target.settings.urls = vec![url.clone()];
        target.settings.cloud_id = None;
    }
    if let Some(id) = &o.cloud_id {
        target.settings.cloud_id = Some(id.clone());
        target.settings.urls.clear();
    }
    if let Some(path) = &o.api_key_file {
        let key =
            read_secret("--api-key-file", path).map_err(|e| TrainError::Config(e.to_string()))?;
        target.credentials = Some(EsCredentials::ApiKey(key));
        key_hint = format!("--api-key-file {}", path.display());
    }
    if let Some(ds) = &o.dataset {
        if ds.is_empty() || ds.contains('-') || ds.to_lowercase() != *ds {
            return Err(TrainError::Config(format!(
                "--dataset {ds:?}: must be non-empty, lowercase, without '-'"
            )));
        }
        target.settings.dataset = ds.clone();
    }
    Ok((target, key_hint))
}

fn exclude_windows(cfg: &Config) -> Result<Windows, TrainError> {
    match &cfg.settings.train.exclude_file {
        Some(p) => Ok(Windows::load(p)?),
        None => Ok(Windows::none()),
    }
}

fn job(
    cfg: &Config,
    target: &EsTarget,
    range: (u64, u64),
    progress: bool,
) -> Result<Job, TrainError> {
    Ok(Job {
        environment: cfg.settings.environment.clone(),
        dataset: target.settings.dataset.clone(),
        from_ns: range.0,
        to_ns: range.1,
        settings: cfg.settings.train.clone(),
        exclude: exclude_windows(cfg)?,
        progress,
    })
}

/// Trains on `[now - train.since, now)` of the configured environment and
/// writes the model to `train.out`.
pub async fn train(
    cfg: &Config,
    overrides: &TargetOverrides,
    progress: bool,
) -> Result<Summary, TrainError> {
    let env = &cfg.settings.environment;
    let (target, key_hint) = resolve_target(cfg, env, overrides)?;
    let client = Target::new(&target, &key_hint, cfg.settings.train.request_timeout)?;
    let job = job(
        cfg,
        &target,
        super::range_since(cfg.settings.train.since),
        progress,
    )?;
    let detectors = Arc::new(Detectors::new(&cfg.settings));
    let mut summary = run(&client, &job, detectors.clone(), |_, _| {}, |_| {}).await?;
    let bytes = detectors.snapshot(env, now_ns());
    let out = &cfg.settings.train.out;
    crate::pipeline::snapshot::write_atomic(out, &bytes).map_err(|source| TrainError::Write {
        path: out.display().to_string(),
        source,
    })?;
    let (keys, _, series, _) = detectors.stats();
    summary.state = (keys, series, 0);
    Ok(summary)
}

/// Loads a model into `detectors` (refusing another environment or format version).
pub fn load_model(detectors: &Detectors, path: &Path, environment: &str) -> Result<(), TrainError> {
    let bytes = std::fs::read(path)
        .map_err(|e| TrainError::Config(format!("cannot read model {}: {e}", path.display())))?;
    detectors
        .restore(&bytes, environment)
        .map_err(|source| TrainError::Model {
            path: path.display().to_string(),
            source,
        })?;
    Ok(())
}

/// Metric and log anomalies are folded into one event per key and bucket of this length.
const NOTE_BUCKET_NS: u64 = 60_000_000_000;

/// Scores `[from_ns, to_ns)` of the configured environment (starting from
/// `model` when given) and returns the anomaly events the sidecar would
/// have pushed, marked as backfilled.
pub async fn backfill(
    cfg: &Config,
    overrides: &TargetOverrides,
    range: (u64, u64),
    model: Option<&Path>,
    progress: bool,
) -> Result<(Summary, Vec<PushEvent>), TrainError> {
    let s = &cfg.settings;
    let env = s.environment.clone();
    let cluster = s.cluster.clone().unwrap_or_default();
    let (target, key_hint) = resolve_target(cfg, &env, overrides)?;
    let client = Target::new(&target, &key_hint, s.train.request_timeout)?;
    let job = job(cfg, &target, range, progress)?;
    let detectors = Arc::new(Detectors::new(s));
    if let Some(path) = model {
        load_model(&detectors, path, &env)?;
    }
    let interval_ns = s.detect.spans.interval.as_nanos() as u64;
    let events: Arc<Mutex<Vec<PushEvent>>> = Arc::default();
    let notes: Arc<Mutex<(u64, Vec<AnomalyNote>)>> = Arc::default();
    let (ev_env, ev_cluster, ev_out) = (env.clone(), cluster.clone(), events.clone());
    let (n_env, n_cluster, n_out, n_notes) =
        (env.clone(), cluster.clone(), events.clone(), notes.clone());
    let on_record = move |rec: &Rec, v: &Verdict| {
        let (signal, service, subject) = match rec {
            // Spans raise interval events of their own (below).
            Rec::Span(_) => return,
            Rec::Point(p) => (Signal::metrics, p.service.as_str(), p.metric.as_str()),
            Rec::Log(l) => (Signal::logs, l.service.as_str(), l.service.as_str()),
        };
        let t = rec.time_ns();
        let bucket = t - t % NOTE_BUCKET_NS;
        let mut explanation = String::new();
        v.explanation.render(subject, &mut explanation);
        let Ok(mut guard) = n_notes.lock() else {
            return;
        };
        let (cur, pending) = &mut *guard;
        if bucket != *cur && !pending.is_empty() {
            flush_notes(pending, *cur, &n_env, &n_cluster, &n_out);
        }
        *cur = bucket;
        pending.push(AnomalyNote {
            at: UNIX_EPOCH + Duration::from_nanos(t),
            signal,
            service: service.to_string(),
            subject: subject.to_string(),
            score: v.score,
            severity: v.severity.as_str(),
            explanation,
        });
    };
    let on_event = move |e: crate::detect::interval::AnomalyEvent| {
        if let Some(mut pe) = crate::push::bridge::span_event(&e, &ev_env, &ev_cluster, interval_ns)
        {
            mark_backfilled(&mut pe);
            if let Ok(mut out) = ev_out.lock() {
                out.push(pe);
            }
        }
    };
    let summary = run(&client, &job, detectors.clone(), on_record, on_event).await?;
    // Intervals still open at the end of the range are closed and judged.
    for e in detectors.tick(range.1) {
        if let Some(mut pe) = crate::push::bridge::span_event(&e, &env, &cluster, interval_ns) {
            mark_backfilled(&mut pe);
            if let Ok(mut out) = events.lock() {
                out.push(pe);
            }
        }
    }
    if let Ok(mut guard) = notes.lock() {
        let (cur, pending) = &mut *guard;
        flush_notes(pending, *cur, &env, &cluster, &events);
    }
    let out = events
        .lock()
        .map(|mut e| std::mem::take(&mut *e))
        .unwrap_or_default();
    Ok((summary, out))
}

fn mark_backfilled(e: &mut PushEvent) {
    e.backfilled = true;
    // Distinct from any id the live sidecar pushed for the same interval;
    // the same on every run of the same backfill (the aggregator dedups).
    e.event_id.push_str("-b");
}

fn flush_notes(
    pending: &mut Vec<AnomalyNote>,
    bucket_ns: u64,
    env: &str,
    cluster: &str,
    out: &Mutex<Vec<PushEvent>>,
) {
    let start = UNIX_EPOCH + Duration::from_nanos(bucket_ns);
    let mut evs = crate::push::bridge::events_of(pending, env, cluster, start);
    pending.clear();
    for e in &mut evs {
        mark_backfilled(e);
    }
    if let Ok(mut o) = out.lock() {
        o.extend(evs);
    }
}

/// Pushes `events` to the configured aggregator (`push.url`, `push.token_file`)
/// and waits until they are sent, up to `deadline`.
pub async fn push_events(
    cfg: &Config,
    events: Vec<PushEvent>,
    deadline: Duration,
) -> Result<(), TrainError> {
    let (Some(_), Some(token)) = (&cfg.settings.push.url, &cfg.push_token) else {
        return Err(TrainError::Config(
            "backfill pushes to the aggregator: set push.url and push.token_file in the config file (or use --print)".into(),
        ));
    };
    let shutdown = tokio_util::sync::CancellationToken::new();
    let (handle, task) = crate::push::start(
        crate::push::PushTarget {
            settings: cfg.settings.push.clone(),
            token: token.clone(),
            environment: cfg.settings.environment.clone(),
            cluster: cfg.settings.cluster.clone(),
        },
        shutdown.clone(),
    )
    .map_err(|e| TrainError::Push(e.to_string()))?;
    let n = events.len() as u64;
    let m = handle.metrics().clone();
    let done = move || {
        use crate::push::PushOutcome::{dropped, rejected, sent};
        (m.get(sent), m.get(rejected) + m.get(dropped))
    };
    // Fed in steps no larger than half the buffer, so nothing is pushed out of it.
    let step = (cfg.settings.push.buffer_events / 2).max(1);
    let started = std::time::Instant::now();
    let mut queued = 0u64;
    let mut it = events.into_iter().peekable();
    while it.peek().is_some() || done().0 + done().1 < n {
        if started.elapsed() > deadline {
            break;
        }
        if handle.buffered() < step {
            for e in it.by_ref().take(step) {
                handle.send(e);
                queued += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
    let (sent, lost) = done();
    if sent < n {
        return Err(TrainError::Push(format!(
            "{sent} of {n} events delivered to {} ({lost} refused or dropped, {} not sent within {deadline:?}); see the aggregator's log",
            cfg.settings.push.url.as_deref().unwrap_or(""),
            n - queued.min(n) + handle.buffered() as u64,
        )));
    }
    Ok(())
}

/// `SystemTime` of ns since the epoch.
pub fn time_of(ns: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(ns)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::io::Write;

    fn resolve(yaml: &str) -> Result<Config, crate::config::ConfigError> {
        let mut f = tempfile::NamedTempFile::new().expect("tempfile");
        f.write_all(yaml.as_bytes()).expect("write");
        crate::config::resolve(Some(f.path()), &BTreeMap::new(), &Default::default())
    }

    #[test]
    fn each_environment_gets_its_target_and_the_central_one_stays_the_default() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = dir.path().join("eu.key");
        std::fs::write(&key, "ZXU6a2V5\n").expect("key");
        let cfg = resolve(&format!(
            "environment: prod\nexport:\n  elasticsearch:\n    urls: [\"http://central:9200\"]\n  elasticsearch_targets:\n    prod:\n      cloud_id: \"prod:ZXUtd2VzdC0xLmF3cy5mb3VuZC5pbyRhYmMkZGVm\"\n      api_key_file: {}\n    staging.eu:\n      urls: [\"https://staging-eu:9200\"]\n",
            key.display()
        ))
        .expect("valid");
        // The sidecar of prod writes to its own entry.
        let es = cfg.settings.export.elasticsearch.as_ref().expect("es");
        assert!(es.cloud_id.is_some());
        assert!(matches!(cfg.es_credentials, Some(EsCredentials::ApiKey(_))));
        // train reads each environment from its entry, others from the central cluster.
        let (t, hint) = resolve_target(&cfg, "staging.eu", &TargetOverrides::default()).expect("t");
        assert_eq!(t.settings.urls, vec!["https://staging-eu:9200".to_string()]);
        assert_eq!(hint, "export.elasticsearch_targets.staging.eu.api_key_file");
        let (t, hint) = resolve_target(&cfg, "dev", &TargetOverrides::default()).expect("t");
        assert_eq!(t.settings.urls, vec!["http://central:9200".to_string()]);
        assert_eq!(hint, "export.elasticsearch.api_key_file");
        // A flag replaces the address, the key file stays.
        let o = TargetOverrides {
            url: Some("http://127.0.0.1:9200".into()),
            ..Default::default()
        };
        let (t, _) = resolve_target(&cfg, "prod", &o).expect("t");
        assert_eq!(t.settings.urls, vec!["http://127.0.0.1:9200".to_string()]);
        assert!(t.settings.cloud_id.is_none() && t.credentials.is_some());
    }

    #[test]
    fn bad_target_entries_name_the_key() {
        for (yaml, key) in [
            (
                "export:\n  elasticsearch_targets:\n    Prod-1:\n      urls: [\"http://x:9200\"]\n",
                "export.elasticsearch_targets",
            ),
            (
                "export:\n  elasticsearch_targets:\n    prod:\n      urls: [\"ftp://x\"]\n",
                "export.elasticsearch_targets.prod.urls",
            ),
            (
                "export:\n  elasticsearch_targets:\n    prod:\n      urls: [\"http://x:9200\"]\n      api_key_file: /nonexistent/key\n",
                "export.elasticsearch_targets.prod.api_key_file",
            ),
            (
                "export:\n  elasticsearch_targets:\n    prod:\n      urls: []\n",
                "export.elasticsearch_targets.prod.urls",
            ),
            ("train:\n  page_size: 0\n", "train.page_size"),
        ] {
            let e = resolve(yaml).expect_err(yaml).to_string();
            assert!(e.contains(key), "{yaml}: {e}");
        }
        // No target at all: train says how to give one.
        let cfg = resolve("environment: prod\n").expect("valid");
        let e = resolve_target(&cfg, "prod", &TargetOverrides::default())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--es") && e.contains("export.elasticsearch_targets.prod"),
            "{e}"
        );
    }
}
