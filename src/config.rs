//! Typed configuration: defaults, then a YAML file, then `OTEL_ANOMALY_*`
//! environment variables, then command-line flags — resolved in one place
//! ([`resolve`]) and validated once into a [`Config`].
//!
//! Environment variables name a path in the file with `__` between levels:
//! `OTEL_ANOMALY_EXPORT__ELASTICSEARCH__URL=https://es:9200` sets
//! `export.elasticsearch.url`. Values are parsed as YAML scalars, so numbers and
//! booleans work. Unknown keys are errors that name the key and where it came from.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_yaml::Value;

/// Prefix of environment variables that override the configuration.
pub const ENV_PREFIX: &str = "OTEL_ANOMALY_";

/// Configuration errors; each names the file, variable or key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: serde_yaml::Error,
    },
    #[error("invalid environment variable {var}: {source}")]
    Env {
        var: String,
        source: serde_yaml::Error,
    },
    #[error("invalid command-line flag --{flag}: {source}")]
    Flag {
        flag: String,
        source: serde_yaml::Error,
    },
    #[error("invalid configuration: {key}: {reason}")]
    Invalid { key: String, reason: String },
    #[error("cannot read secret file {path} (for {key}): {source}")]
    Secret {
        key: String,
        path: PathBuf,
        source: std::io::Error,
    },
}

pub(crate) fn invalid(key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_string(),
        reason: reason.into(),
    }
}

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Environment this sidecar serves (dev, staging, prod…): data streams and keys are per environment.
    pub environment: String,
    /// Optional cluster name, recorded with the data.
    pub cluster: Option<String>,
    /// Directory for NDJSON output, dead letters and state.
    pub data_dir: PathBuf,
    /// Deadline for the staged shutdown.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    pub receiver: ReceiverSettings,
    pub admin: AdminSettings,
    pub pipeline: PipelineSettings,
    pub detect: DetectSettings,
    pub export: ExportSettings,
    pub log: LogSettings,
    /// Anomaly events to the aggregator (off by default).
    pub push: crate::push::config::PushSettings,
    /// `train` and `backfill`: learning from history in Elasticsearch.
    pub train: crate::train::settings::TrainSettings,
    /// The disk write-ahead queue (on by default).
    pub wal: crate::export::wal::WalSettings,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            environment: "default".into(),
            cluster: None,
            data_dir: PathBuf::from("otel-anomaly-data"),
            shutdown_timeout: Duration::from_secs(15),
            receiver: ReceiverSettings::default(),
            admin: AdminSettings::default(),
            pipeline: PipelineSettings::default(),
            detect: DetectSettings::default(),
            export: ExportSettings::default(),
            log: LogSettings::default(),
            push: Default::default(),
            train: Default::default(),
            wal: Default::default(),
        }
    }
}

/// One listener.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ListenerSettings {
    #[serde(default = "yes")]
    pub enabled: bool,
    pub listen: SocketAddr,
    /// TLS (and mTLS with `client_ca_file`) on this listener.
    #[serde(default)]
    pub tls: Option<crate::tls::TlsSettings>,
}

fn yes() -> bool {
    true
}

/// OTLP receivers.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ReceiverSettings {
    /// OTLP/gRPC (the collector's port 4317).
    pub grpc: ListenerSettings,
    /// OTLP/HTTP (the collector's port 4318: /v1/traces, /v1/metrics, /v1/logs).
    pub http: ListenerSettings,
    /// Largest request body accepted, bytes, as sent (compressed or not).
    pub max_request_bytes: usize,
    /// Largest request after decompression, bytes (caps gzip bombs).
    pub max_decompressed_bytes: usize,
    /// Bearer-token auth for OTLP senders (both receivers); off when absent.
    pub auth: Option<ReceiverAuthSettings>,
}

/// `receiver.auth`: senders must send `authorization: Bearer <token>`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ReceiverAuthSettings {
    /// Files each holding one accepted token (several allow rotation).
    pub token_files: Vec<PathBuf>,
}

impl Default for ReceiverSettings {
    fn default() -> Self {
        Self {
            grpc: ListenerSettings {
                enabled: true,
                listen: SocketAddr::from(([0, 0, 0, 0], 4317)),
                tls: None,
            },
            http: ListenerSettings {
                enabled: true,
                listen: SocketAddr::from(([0, 0, 0, 0], 4318)),
                tls: None,
            },
            max_request_bytes: 8 << 20,
            max_decompressed_bytes: 32 << 20,
            auth: None,
        }
    }
}

/// Health and metrics endpoint.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSettings {
    /// Serves /metrics, /healthz and /readyz.
    pub listen: SocketAddr,
    /// TLS (and mTLS with `client_ca_file`) on the admin listener.
    pub tls: Option<crate::tls::TlsSettings>,
}

impl Default for AdminSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 8888)),
            tls: None,
        }
    }
}

/// Queues and workers.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineSettings {
    /// Records (spans, points, log records) accepted but not yet exported; past it, receivers refuse.
    pub max_queued_records: usize,
    /// Scoring worker threads (0: one per core).
    pub workers: usize,
}

impl Default for PipelineSettings {
    fn default() -> Self {
        Self {
            max_queued_records: 50_000,
            workers: 0,
        }
    }
}

/// Detector settings.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct DetectSettings {
    pub spans: SpanDetectSettings,
    pub metrics: MetricDetectSettings,
    pub logs: LogDetectSettings,
    pub snapshot: SnapshotSettings,
    /// A model written by `otel-anomaly train`, to start from (merged under
    /// the sidecar's own restored snapshot: see docs/train.md).
    pub model: Option<PathBuf>,
}

/// Detector state saved to disk and restored at start.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SnapshotSettings {
    /// Save and restore detector state at all.
    pub enabled: bool,
    /// Snapshot file (default: `<data_dir>/detectors.snap`).
    pub path: Option<PathBuf>,
    /// How often the state is saved while running (it is also saved at shutdown).
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
}

impl Default for SnapshotSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            path: None,
            interval: Duration::from_secs(300),
        }
    }
}

/// Span detector.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SpanDetectSettings {
    /// Half-life of the latency and error-rate baselines.
    #[serde(with = "humantime_serde")]
    pub half_life: Duration,
    /// Spans of history a key needs before its spans are scored.
    pub min_samples: u64,
    /// Interval over which error rates are judged.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Cap on (service, span name, kind) keys. When reached, keys idle for
    /// `idle_eviction` make room; if none is idle, more share an overflow key.
    pub max_keys: usize,
    /// A key not seen for this long may be evicted to make room for a new one.
    #[serde(with = "humantime_serde")]
    pub idle_eviction: Duration,
}

impl Default for SpanDetectSettings {
    fn default() -> Self {
        Self {
            half_life: Duration::from_secs(600),
            min_samples: 50,
            interval: Duration::from_secs(10),
            max_keys: 10_000,
            idle_eviction: Duration::from_secs(3_600),
        }
    }
}

/// Metric detector.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MetricDetectSettings {
    /// Points a series needs before it is scored.
    pub min_samples: u64,
    /// Effective memory of the baseline, in points.
    pub window: u64,
    /// Cap on tracked series.
    pub max_series: usize,
}

impl Default for MetricDetectSettings {
    fn default() -> Self {
        Self {
            min_samples: 30,
            window: 200,
            max_series: 50_000,
        }
    }
}

/// Log detector.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogDetectSettings {
    /// Cap on tracked services.
    pub max_services: usize,
}

impl Default for LogDetectSettings {
    fn default() -> Self {
        Self {
            max_services: 1_000,
        }
    }
}

/// Outputs.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ExportSettings {
    /// Elasticsearch; when absent, documents go to NDJSON files (`file`).
    pub elasticsearch: Option<ElasticsearchSettings>,
    /// One Elasticsearch target per environment (environment → target), for
    /// a cluster per environment or region; an environment listed here uses
    /// its entry instead of `elasticsearch`, in the sidecar and in `train`.
    pub elasticsearch_targets: BTreeMap<String, ElasticsearchSettings>,
    pub file: FileSettings,
    /// Documents Elasticsearch rejected for good, with the reason (default: `<data_dir>/dead-letter.ndjson`).
    pub dead_letter_path: Option<PathBuf>,
    /// Processor mode: forward every record, enriched, to a next OTLP hop (see `docs/processor.md`).
    pub otlp: Option<OtlpExportSettings>,
}

/// How documents are laid out in Elasticsearch.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum IndexMode {
    /// Data streams `traces-<dataset>-<environment>` (Elasticsearch 7.9+).
    #[default]
    DataStream,
    /// Plain indices of the same names, for servers without data streams.
    Index,
}

/// Bulk body compression.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    #[default]
    Gzip,
    None,
}

/// Elasticsearch output.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ElasticsearchSettings {
    /// Node URLs (any one is used; requests go round-robin across them).
    pub urls: Vec<String>,
    /// Elastic Cloud id (instead of `urls`).
    pub cloud_id: Option<String>,
    /// File holding an encoded API key (the `encoded` value Elasticsearch returns).
    pub api_key_file: Option<PathBuf>,
    /// Basic auth user (with `password_file`).
    pub username: Option<String>,
    /// File holding the basic auth password.
    pub password_file: Option<PathBuf>,
    /// PEM CA certificate to trust for TLS.
    pub ca_file: Option<PathBuf>,
    /// Client certificate chain (PEM) for TLS client authentication, with `client_key_file`.
    pub client_cert_file: Option<PathBuf>,
    /// Private key (PEM) of `client_cert_file`.
    pub client_key_file: Option<PathBuf>,
    /// Data streams or plain indices.
    pub mode: IndexMode,
    /// Dataset part of the names: `traces-<dataset>-<environment>`.
    pub dataset: String,
    /// Install index templates at start.
    pub setup: bool,
    /// Send the Elasticsearch 8 compatibility media type.
    pub compatibility_header: bool,
    pub bulk: BulkSettings,
}

impl Default for ElasticsearchSettings {
    fn default() -> Self {
        Self {
            urls: vec!["http://127.0.0.1:9200".into()],
            cloud_id: None,
            api_key_file: None,
            username: None,
            password_file: None,
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
            mode: IndexMode::DataStream,
            dataset: "otel".into(),
            setup: true,
            compatibility_header: false,
            bulk: BulkSettings::default(),
        }
    }
}

/// Bulk request shaping and retries.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BulkSettings {
    /// Most documents in one bulk request.
    pub max_docs: usize,
    /// Most bytes (uncompressed) in one bulk request.
    pub max_bytes: usize,
    /// Longest a document waits for a fuller request.
    #[serde(with = "humantime_serde")]
    pub flush_interval: Duration,
    /// Bulk requests in flight at once.
    pub max_in_flight: usize,
    /// With no bulk request in flight, send what is pending at once rather
    /// than wait for `max_docs` or `flush_interval` (low added latency at
    /// low and medium load; requests still fill up under load).
    pub send_when_idle: bool,
    pub compression: Compression,
    /// Timeout of one bulk request.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Attempts for a document Elasticsearch answered 429/5xx for, before it is dead-lettered.
    /// Connection failures are retried without limit (backpressure stops intake instead).
    pub max_retries: u32,
    /// First retry delay; doubles up to `max_backoff`, with jitter.
    #[serde(with = "humantime_serde")]
    pub initial_backoff: Duration,
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
}

impl Default for BulkSettings {
    fn default() -> Self {
        Self {
            max_docs: 2_000,
            max_bytes: 5 << 20,
            flush_interval: Duration::from_secs(1),
            max_in_flight: 2,
            send_when_idle: true,
            compression: Compression::Gzip,
            timeout: Duration::from_secs(30),
            max_retries: 10,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(10),
        }
    }
}

/// NDJSON file output (the embedded default).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FileSettings {
    /// Output directory (default: `<data_dir>/ndjson`).
    pub dir: Option<PathBuf>,
    /// A file is rotated once it reaches this many bytes.
    pub max_file_bytes: u64,
    /// Write NDJSON files when no Elasticsearch is configured. Default: yes,
    /// unless `export.otlp` is set (then the OTLP hop is the only output).
    pub enabled: Option<bool>,
}

impl Default for FileSettings {
    fn default() -> Self {
        Self {
            dir: None,
            max_file_bytes: 64 << 20,
            enabled: None,
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Process logs.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    /// `tracing` filter, e.g. `info` or `otel_anomaly=debug`.
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

/// A secret value: never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The secret itself; call only where it is sent.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Elasticsearch credentials, read from their files.
#[derive(Debug, Clone, PartialEq)]
pub enum EsCredentials {
    ApiKey(Secret),
    Basic { username: String, password: Secret },
}

/// The checked configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub settings: Settings,
    /// Elasticsearch credentials, if configured.
    pub es_credentials: Option<EsCredentials>,
    /// Where the settings came from, for messages.
    pub source: String,
    /// The aggregator push token, when `push.url` is set.
    pub push_token: Option<Secret>,
    /// Tokens OTLP senders must present (`receiver.auth`); empty: no auth.
    pub receiver_tokens: Vec<Secret>,
    /// `export.elasticsearch` as configured, before an
    /// `export.elasticsearch_targets` entry for this environment replaced it.
    pub es_default: Option<EsTarget>,
    /// `export.elasticsearch_targets`, checked, with their credentials.
    pub es_targets: BTreeMap<String, EsTarget>,
    /// The checked OTLP next hop, when `export.otlp` is set.
    pub otlp: Option<OtlpTarget>,
}

/// One checked Elasticsearch target and its credentials.
#[derive(Debug, Clone, PartialEq)]
pub struct EsTarget {
    pub settings: ElasticsearchSettings,
    pub credentials: Option<EsCredentials>,
}

impl Config {
    /// The Elasticsearch target of `environment`: its
    /// `export.elasticsearch_targets` entry, else `export.elasticsearch`.
    pub fn es_target(&self, environment: &str) -> Option<&EsTarget> {
        self.es_targets
            .get(environment)
            .or(self.es_default.as_ref())
    }
}

impl Config {
    /// NDJSON output directory.
    pub fn file_dir(&self) -> PathBuf {
        self.settings
            .export
            .file
            .dir
            .clone()
            .unwrap_or_else(|| self.settings.data_dir.join("ndjson"))
    }

    /// Detector snapshot file.
    pub fn snapshot_path(&self) -> PathBuf {
        self.settings
            .detect
            .snapshot
            .path
            .clone()
            .unwrap_or_else(|| self.settings.data_dir.join("detectors.snap"))
    }

    /// WAL segment directory.
    pub fn wal_dir(&self) -> PathBuf {
        self.settings
            .wal
            .dir
            .clone()
            .unwrap_or_else(|| self.settings.data_dir.join("wal"))
    }

    /// Where dead letters go.
    pub fn dead_letter_path(&self) -> PathBuf {
        self.settings
            .export
            .dead_letter_path
            .clone()
            .unwrap_or_else(|| self.settings.data_dir.join("dead-letter.ndjson"))
    }
}

/// Values given as command-line flags (highest precedence), as (config path, value).
#[derive(Debug, Clone, Default)]
pub struct FlagOverrides(pub Vec<(String, String)>);

impl FlagOverrides {
    /// Adds `path = value` if `value` is set.
    pub fn set(&mut self, path: &str, value: Option<impl ToString>) {
        if let Some(v) = value {
            self.0.push((path.to_string(), v.to_string()));
        }
    }
}

fn set_path(root: &mut Value, path: &[String], value: Value) {
    let mut cur = root;
    for (i, seg) in path.iter().enumerate() {
        if !cur.is_mapping() {
            *cur = Value::Mapping(Default::default());
        }
        let Value::Mapping(map) = cur else { return };
        let key = Value::String(seg.clone());
        if i + 1 == path.len() {
            map.insert(key, value);
            return;
        }
        cur = map.entry(key).or_insert(Value::Mapping(Default::default()));
    }
}

fn scalar(s: &str) -> Value {
    // A YAML scalar: numbers and booleans are typed, anything else is a string.
    match serde_yaml::from_str::<Value>(s) {
        Ok(v @ (Value::Bool(_) | Value::Number(_) | Value::Sequence(_))) => v,
        _ => Value::String(s.to_string()),
    }
}

/// Turns `OTEL_ANOMALY_EXPORT__ELASTICSEARCH__URLS` into `export.elasticsearch.urls`.
fn env_path(var: &str) -> Option<Vec<String>> {
    let rest = var.strip_prefix(ENV_PREFIX)?;
    if rest.is_empty() {
        return None;
    }
    Some(rest.split("__").map(|s| s.to_ascii_lowercase()).collect())
}

/// Resolves the configuration: defaults < `file` < `env` (`OTEL_ANOMALY_*`) < `flags`,
/// then validates it. `env` is passed in (not read here) so this is testable.
pub fn resolve(
    file: Option<&Path>,
    env: &BTreeMap<String, String>,
    flags: &FlagOverrides,
) -> Result<Config, ConfigError> {
    let (mut tree, source) = match file {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_path_buf(),
                source,
            })?;
            let tree: Value = if text.trim().is_empty() {
                Value::Mapping(Default::default())
            } else {
                serde_yaml::from_str(&text).map_err(|source| ConfigError::Parse {
                    path: path.to_path_buf(),
                    source,
                })?
            };
            // Check the file alone first, so its errors name the file.
            Settings::deserialize(tree.clone()).map_err(|source| ConfigError::Parse {
                path: path.to_path_buf(),
                source,
            })?;
            (tree, path.display().to_string())
        }
        None => (
            Value::Mapping(Default::default()),
            "built-in defaults".to_string(),
        ),
    };
    for (var, raw) in env {
        let Some(path) = env_path(var) else { continue };
        let mut probe = tree.clone();
        set_path(&mut probe, &path, scalar(raw));
        Settings::deserialize(probe.clone()).map_err(|source| ConfigError::Env {
            var: var.clone(),
            source,
        })?;
        tree = probe;
    }
    for (path, raw) in &flags.0 {
        let segs: Vec<String> = path.split('.').map(str::to_string).collect();
        let mut probe = tree.clone();
        set_path(&mut probe, &segs, scalar(raw));
        Settings::deserialize(probe.clone()).map_err(|source| ConfigError::Flag {
            flag: path.replace(['.', '_'], "-"),
            source,
        })?;
        tree = probe;
    }
    let settings = Settings::deserialize(tree).map_err(|err| ConfigError::Parse {
        path: PathBuf::from(&source),
        source: err,
    })?;
    let otlp = match &settings.export.otlp {
        Some(o) => Some(validate_otlp(o, env)?),
        None => None,
    };
    let mut cfg = validate(settings, source)?;
    cfg.otlp = otlp;
    Ok(cfg)
}

pub(crate) fn read_secret(key: &str, path: &Path) -> Result<Secret, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Secret {
        key: key.to_string(),
        path: path.to_path_buf(),
        source,
    })?;
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(invalid(
            key,
            format!("secret file {} is empty", path.display()),
        ));
    }
    Ok(Secret(trimmed.to_string()))
}

fn validate(settings: Settings, source: String) -> Result<Config, ConfigError> {
    let s = &settings;
    if s.environment.is_empty()
        || !s
            .environment
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '.')
    {
        // Elasticsearch data stream names are lowercase and may not contain '-' in the namespace.
        return Err(invalid(
            "environment",
            format!(
                "{:?} must be non-empty lowercase letters, digits, '_' or '.' (it becomes the data stream namespace)",
                s.environment
            ),
        ));
    }
    if s.receiver.max_request_bytes == 0 {
        return Err(invalid(
            "receiver.max_request_bytes",
            "must be greater than 0",
        ));
    }
    if s.receiver.max_decompressed_bytes < s.receiver.max_request_bytes {
        return Err(invalid(
            "receiver.max_decompressed_bytes",
            "must be at least receiver.max_request_bytes",
        ));
    }
    if !s.receiver.grpc.enabled && !s.receiver.http.enabled {
        return Err(invalid("receiver", "enable at least one of grpc and http"));
    }
    if s.wal.enabled {
        s.wal
            .check()
            .map_err(|(key, reason)| invalid(key, reason))?;
        if s.wal.max_bytes < s.receiver.max_decompressed_bytes as u64 {
            return Err(invalid(
                "wal.max_bytes",
                "must be at least receiver.max_decompressed_bytes (the largest request)",
            ));
        }
    }
    if s.pipeline.max_queued_records == 0 {
        return Err(invalid(
            "pipeline.max_queued_records",
            "must be greater than 0",
        ));
    }
    let d = &s.detect;
    if d.spans.half_life.is_zero() || d.spans.interval.is_zero() {
        return Err(invalid(
            "detect.spans",
            "half_life and interval must be greater than 0",
        ));
    }
    if d.spans.max_keys == 0 || d.metrics.max_series == 0 || d.logs.max_services == 0 {
        return Err(invalid(
            "detect",
            "max_keys, max_series and max_services must be greater than 0",
        ));
    }
    if d.metrics.window == 0 {
        return Err(invalid("detect.metrics.window", "must be greater than 0"));
    }
    if d.snapshot.enabled && d.snapshot.interval < Duration::from_secs(1) {
        return Err(invalid(
            "detect.snapshot.interval",
            "must be at least 1s (or set detect.snapshot.enabled: false)",
        ));
    }
    let mut es_credentials = None;
    let mut es_default = None;
    if let Some(es) = &s.export.elasticsearch {
        es_credentials = validate_es(es, "export.elasticsearch")?;
        es_default = Some(EsTarget {
            settings: es.clone(),
            credentials: es_credentials.clone(),
        });
    }
    let mut es_targets = BTreeMap::new();
    for (env, es) in &s.export.elasticsearch_targets {
        if !valid_environment(env) {
            return Err(invalid(
                "export.elasticsearch_targets",
                format!(
                    "{env:?} is not an environment name (lowercase letters, digits, '_' or '.')"
                ),
            ));
        }
        let credentials = validate_es(es, &format!("export.elasticsearch_targets.{env}"))?;
        es_targets.insert(
            env.clone(),
            EsTarget {
                settings: es.clone(),
                credentials,
            },
        );
    }
    let mut settings = settings;
    // The sidecar writes to its own environment's entry when there is one.
    if let Some(t) = es_targets.get(&settings.environment) {
        settings.export.elasticsearch = Some(t.settings.clone());
        es_credentials = t.credentials.clone();
    }
    let s = &settings;
    if s.export.file.max_file_bytes == 0 {
        return Err(invalid(
            "export.file.max_file_bytes",
            "must be greater than 0",
        ));
    }
    let push_token = crate::push::config::validate(&s.push)?;
    let receiver_tokens = validate_security(s)?;
    crate::train::settings::validate(&s.train)?;
    Ok(Config {
        settings,
        es_credentials,
        source,
        push_token,
        receiver_tokens,
        es_default,
        es_targets,
        otlp: None,
    })
}

/// TLS sections and receiver tokens (issue 10): files exist, tokens read.
fn validate_security(s: &Settings) -> Result<Vec<Secret>, ConfigError> {
    for (key, tls) in [
        ("receiver.grpc.tls", &s.receiver.grpc.tls),
        ("receiver.http.tls", &s.receiver.http.tls),
        ("admin.tls", &s.admin.tls),
    ] {
        if let Some(t) = tls {
            crate::tls::check_files(key, t).map_err(|m| invalid(key, m))?;
        }
    }
    if let Some(es) = &s.export.elasticsearch {
        match (&es.client_cert_file, &es.client_key_file) {
            (Some(c), Some(k)) => {
                for (key, p) in [
                    ("export.elasticsearch.client_cert_file", c),
                    ("export.elasticsearch.client_key_file", k),
                ] {
                    if !p.is_file() {
                        return Err(invalid(key, format!("{} is not a file", p.display())));
                    }
                }
            }
            (None, None) => {}
            _ => {
                return Err(invalid(
                    "export.elasticsearch",
                    "give both client_cert_file and client_key_file, or neither",
                ))
            }
        }
    }
    let Some(auth) = &s.receiver.auth else {
        return Ok(Vec::new());
    };
    if auth.token_files.is_empty() {
        return Err(invalid(
            "receiver.auth.token_files",
            "give at least one token file (or remove receiver.auth)",
        ));
    }
    auth.token_files
        .iter()
        .enumerate()
        .map(|(i, p)| read_secret(&format!("receiver.auth.token_files[{i}]"), p))
        .collect()
}

fn valid_environment(env: &str) -> bool {
    !env.is_empty()
        && env
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '.')
}

/// Checks one Elasticsearch target; errors name keys under `prefix`.
fn validate_es(
    es: &ElasticsearchSettings,
    prefix: &str,
) -> Result<Option<EsCredentials>, ConfigError> {
    if es.urls.is_empty() && es.cloud_id.is_none() {
        return Err(invalid(
            &format!("{prefix}.urls"),
            "give at least one URL or a cloud_id",
        ));
    }
    for u in &es.urls {
        let parsed = url::Url::parse(u)
            .map_err(|e| invalid(&format!("{prefix}.urls"), format!("{u:?}: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(invalid(
                &format!("{prefix}.urls"),
                format!("{u:?}: scheme must be http or https"),
            ));
        }
    }
    if es.dataset.is_empty() || es.dataset.contains('-') || es.dataset.to_lowercase() != es.dataset
    {
        return Err(invalid(
            &format!("{prefix}.dataset"),
            "must be non-empty, lowercase, without '-'",
        ));
    }
    let b = &es.bulk;
    if b.max_docs == 0 || b.max_bytes == 0 || b.max_in_flight == 0 {
        return Err(invalid(
            &format!("{prefix}.bulk"),
            "max_docs, max_bytes and max_in_flight must be greater than 0",
        ));
    }
    if let Some(ca) = &es.ca_file {
        if !ca.is_file() {
            return Err(invalid(
                &format!("{prefix}.ca_file"),
                format!("{} is not a file", ca.display()),
            ));
        }
    }
    let credentials = match (&es.api_key_file, &es.username, &es.password_file) {
        (Some(_), Some(_), _) => {
            return Err(invalid(
                prefix,
                "give either api_key_file or username/password_file, not both",
            ))
        }
        (Some(path), None, _) => Some(EsCredentials::ApiKey(read_secret(
            &format!("{prefix}.api_key_file"),
            path,
        )?)),
        (None, Some(user), Some(path)) => Some(EsCredentials::Basic {
            username: user.clone(),
            password: read_secret(&format!("{prefix}.password_file"), path)?,
        }),
        (None, Some(_), None) => {
            return Err(invalid(
                &format!("{prefix}.password_file"),
                "required with username",
            ))
        }
        (None, None, Some(_)) => {
            return Err(invalid(
                &format!("{prefix}.username"),
                "required with password_file",
            ))
        }
        (None, None, None) => None,
    };
    Ok(credentials)
}

// ---- export.otlp: processor mode (issue 9) ---------------------------------

/// Transport of the OTLP next hop.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum OtlpProtocol {
    /// OTLP/gRPC (the collector's `otlp` exporter).
    #[default]
    Grpc,
    /// OTLP/HTTP with protobuf bodies (the collector's `otlphttp` exporter).
    Http,
}

/// Compression of requests to the next hop.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum OtlpCompression {
    #[default]
    Gzip,
    None,
}

/// One signal of the OTLP next hop.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OtlpSignalSettings {
    /// Forward this signal.
    pub enabled: bool,
    /// Full URL for this signal (HTTP: including `/v1/<signal>`), instead of `endpoint`.
    pub endpoint: Option<String>,
}

impl Default for OtlpSignalSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            endpoint: None,
        }
    }
}

/// Retries towards the next hop (the OTLP spec's retryable answers).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OtlpRetrySettings {
    /// First retry delay; doubles up to `max_backoff`, with jitter. A server's
    /// `RetryInfo` / `Retry-After` replaces it when longer.
    #[serde(with = "humantime_serde")]
    pub initial_backoff: Duration,
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// A batch still failing after this long is dead-lettered. Connection
    /// failures (next hop down) are retried without limit: backpressure stops
    /// intake instead, so nothing is lost while the hop is away.
    #[serde(with = "humantime_serde")]
    pub max_elapsed: Duration,
}

impl Default for OtlpRetrySettings {
    fn default() -> Self {
        Self {
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            max_elapsed: Duration::from_secs(300),
        }
    }
}

/// `export.otlp`: the next OTLP hop.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OtlpExportSettings {
    pub protocol: OtlpProtocol,
    /// Base URL: gRPC `http(s)://host:4317`; HTTP `http(s)://host:4318` (`/v1/<signal>` is appended).
    pub endpoint: Option<String>,
    pub traces: OtlpSignalSettings,
    pub metrics: OtlpSignalSettings,
    pub logs: OtlpSignalSettings,
    pub compression: OtlpCompression,
    /// Timeout of one export request.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Plain (non-secret) headers sent with every request.
    pub headers: BTreeMap<String, String>,
    /// File of `Name: value` lines (secrets), one header a line.
    pub headers_file: Option<PathBuf>,
    /// File holding the `Authorization` header value (e.g. `Bearer …`).
    pub authorization_file: Option<PathBuf>,
    /// Headers whose values come from environment variables: `{Header-Name: VAR}`.
    pub headers_from_env: BTreeMap<String, String>,
    /// PEM CA certificate to trust for TLS (https endpoints).
    pub ca_file: Option<PathBuf>,
    /// Scored batches that may wait for this output (its own queue).
    pub queue_batches: usize,
    /// Export requests in flight at once.
    pub max_in_flight: usize,
    pub retry: OtlpRetrySettings,
}

impl Default for OtlpExportSettings {
    fn default() -> Self {
        Self {
            protocol: OtlpProtocol::Grpc,
            endpoint: None,
            traces: OtlpSignalSettings::default(),
            metrics: OtlpSignalSettings::default(),
            logs: OtlpSignalSettings::default(),
            compression: OtlpCompression::Gzip,
            timeout: Duration::from_secs(10),
            headers: BTreeMap::new(),
            headers_file: None,
            authorization_file: None,
            headers_from_env: BTreeMap::new(),
            ca_file: None,
            queue_batches: 256,
            max_in_flight: 4,
            retry: OtlpRetrySettings::default(),
        }
    }
}

/// The checked OTLP next hop.
#[derive(Debug, Clone)]
pub struct OtlpTarget {
    pub settings: OtlpExportSettings,
    /// Full URL of each signal (traces, metrics, logs); `None` when not forwarded.
    pub endpoints: [Option<String>; 3],
    /// Headers, lowercase names; values may be secrets.
    pub headers: Vec<(String, Secret)>,
    /// PEM of `ca_file`.
    pub ca_pem: Option<Vec<u8>>,
}

impl OtlpTarget {
    /// The URL a signal goes to, if it is forwarded.
    pub fn endpoint(&self, signal: crate::telemetry::Signal) -> Option<&str> {
        use crate::telemetry::Signal;
        let i = match signal {
            Signal::traces => 0,
            Signal::metrics => 1,
            Signal::logs => 2,
        };
        self.endpoints[i].as_deref()
    }
}

fn check_header(key: &str, name: &str, value: &str) -> Result<(), ConfigError> {
    let ok_name = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !ok_name {
        return Err(invalid(key, format!("{name:?} is not a valid header name")));
    }
    if value.bytes().any(|b| b < 0x20 && b != b'\t' || b == 0x7f) {
        return Err(invalid(
            key,
            format!("the value of header {name} holds control characters"),
        ));
    }
    Ok(())
}

fn validate_otlp(
    o: &OtlpExportSettings,
    env: &BTreeMap<String, String>,
) -> Result<OtlpTarget, ConfigError> {
    let mut endpoints: [Option<String>; 3] = [None, None, None];
    for (i, (name, sig)) in [
        ("traces", &o.traces),
        ("metrics", &o.metrics),
        ("logs", &o.logs),
    ]
    .into_iter()
    .enumerate()
    {
        if !sig.enabled {
            continue;
        }
        let url =
            match (&sig.endpoint, &o.endpoint) {
                (Some(u), _) => u.clone(),
                (None, Some(base)) => match o.protocol {
                    OtlpProtocol::Grpc => base.clone(),
                    OtlpProtocol::Http => format!("{}/v1/{name}", base.trim_end_matches('/')),
                },
                (None, None) => return Err(invalid(
                    &format!("export.otlp.{name}.endpoint"),
                    "give export.otlp.endpoint or a per-signal endpoint (or set enabled: false)",
                )),
            };
        let key = format!("export.otlp.{name}.endpoint");
        let parsed = url::Url::parse(&url).map_err(|e| invalid(&key, format!("{url:?}: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
            return Err(invalid(
                &key,
                format!("{url:?}: must be an http:// or https:// URL with a host"),
            ));
        }
        endpoints[i] = Some(url);
    }
    if endpoints.iter().all(Option::is_none) {
        return Err(invalid("export.otlp", "every signal is disabled"));
    }
    if o.queue_batches == 0 || o.max_in_flight == 0 {
        return Err(invalid(
            "export.otlp",
            "queue_batches and max_in_flight must be greater than 0",
        ));
    }
    if o.timeout.is_zero() || o.retry.initial_backoff.is_zero() {
        return Err(invalid(
            "export.otlp",
            "timeout and retry.initial_backoff must be greater than 0",
        ));
    }
    if o.retry.max_backoff < o.retry.initial_backoff {
        return Err(invalid(
            "export.otlp.retry.max_backoff",
            "must be at least retry.initial_backoff",
        ));
    }
    let mut headers = Vec::new();
    for (name, value) in &o.headers {
        check_header("export.otlp.headers", name, value)?;
        if name.eq_ignore_ascii_case("authorization") {
            return Err(invalid(
                "export.otlp.headers",
                "Authorization is a secret: give it in authorization_file, headers_file or headers_from_env",
            ));
        }
        headers.push((name.to_ascii_lowercase(), Secret(value.clone())));
    }
    if let Some(path) = &o.headers_file {
        let key = "export.otlp.headers_file";
        let text = read_secret(key, path)?;
        for (n, line) in text.expose().lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((name, value)) = line.split_once(':') else {
                return Err(invalid(
                    key,
                    format!("{} line {}: expected `Name: value`", path.display(), n + 1),
                ));
            };
            let (name, value) = (name.trim(), value.trim());
            check_header(key, name, value)?;
            headers.push((name.to_ascii_lowercase(), Secret(value.to_string())));
        }
    }
    if let Some(path) = &o.authorization_file {
        let value = read_secret("export.otlp.authorization_file", path)?;
        check_header(
            "export.otlp.authorization_file",
            "authorization",
            value.expose(),
        )?;
        headers.push(("authorization".into(), value));
    }
    for (name, var) in &o.headers_from_env {
        let key = "export.otlp.headers_from_env";
        let Some(value) = env.get(var) else {
            return Err(invalid(
                key,
                format!("environment variable {var} (for header {name}) is not set"),
            ));
        };
        check_header(key, name, value)?;
        headers.push((name.to_ascii_lowercase(), Secret(value.trim().to_string())));
    }
    let ca_pem = match &o.ca_file {
        Some(path) => {
            let pem = std::fs::read(path).map_err(|e| {
                invalid(
                    "export.otlp.ca_file",
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            if !pem.windows(11).any(|w| w == b"-----BEGIN ") {
                return Err(invalid(
                    "export.otlp.ca_file",
                    format!("{} is not a PEM certificate", path.display()),
                ));
            }
            Some(pem)
        }
        None => None,
    };
    Ok(OtlpTarget {
        settings: o.clone(),
        endpoints,
        headers,
        ca_pem,
    })
}

#[cfg(test)]
mod otlp_config_tests {
    use super::*;

    fn resolve_yaml(yaml: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.yaml");
        std::fs::write(&path, yaml).unwrap();
        let env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        resolve(Some(&path), &env, &FlagOverrides::default())
    }

    #[test]
    fn endpoints_per_signal_and_headers_from_files_and_env() {
        let dir = tempfile::tempdir().unwrap();
        let hf = dir.path().join("headers");
        std::fs::write(&hf, "# tenant\nX-Tenant: acme\n").unwrap();
        let af = dir.path().join("auth");
        std::fs::write(&af, "Bearer s3cret\n").unwrap();
        let yaml = format!(
            "export:\n  otlp:\n    protocol: http\n    endpoint: http://hop:4318/\n    logs:\n      endpoint: http://other:4318/custom/logs\n    metrics:\n      enabled: false\n    headers: {{x-plain: one}}\n    headers_file: {}\n    authorization_file: {}\n    headers_from_env: {{X-Key: HOP_KEY}}\n",
            hf.display(),
            af.display()
        );
        let cfg = resolve_yaml(&yaml, &[("HOP_KEY", "k1")]).unwrap();
        let t = cfg.otlp.unwrap();
        assert_eq!(
            t.endpoint(crate::telemetry::Signal::traces),
            Some("http://hop:4318/v1/traces")
        );
        assert_eq!(t.endpoint(crate::telemetry::Signal::metrics), None);
        assert_eq!(
            t.endpoint(crate::telemetry::Signal::logs),
            Some("http://other:4318/custom/logs")
        );
        let h: Vec<(&str, &str)> = t
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.expose()))
            .collect();
        assert_eq!(
            h,
            [
                ("x-plain", "one"),
                ("x-tenant", "acme"),
                ("authorization", "Bearer s3cret"),
                ("x-key", "k1")
            ]
        );
        // Secrets never show in check-config's output.
        assert!(!format!("{t:?}").contains("s3cret"));
    }

    #[test]
    fn clear_errors() {
        let cases = [
            ("export:\n  otlp: {}\n", "export.otlp.traces.endpoint"),
            ("export:\n  otlp:\n    endpoint: ftp://x\n", "must be an http:// or https:// URL"),
            ("export:\n  otlp:\n    endpoint: http://x:1\n    headers: {Authorization: t}\n", "authorization_file"),
            ("export:\n  otlp:\n    endpoint: http://x:1\n    headers_from_env: {X-K: NOPE}\n", "NOPE"),
            ("export:\n  otlp:\n    endpoint: http://x:1\n    queue_batches: 0\n", "queue_batches"),
            ("export:\n  otlp:\n    endpoint: http://x:1\n    ca_file: /nonexistent/ca.pem\n", "export.otlp.ca_file"),
            ("export:\n  otlp:\n    endpoint: http://x:1\n    traces: {enabled: false}\n    metrics: {enabled: false}\n    logs: {enabled: false}\n", "every signal is disabled"),
            ("export:\n  otlp:\n    endpoint: http://x:1\n    bogus: 1\n", "bogus"),
        ];
        for (yaml, want) in cases {
            let err = resolve_yaml(yaml, &[]).unwrap_err().to_string();
            assert!(err.contains(want), "{yaml}: {err}");
        }
    }

    #[test]
    fn env_enables_the_section() {
        let cfg = resolve_yaml(
            "environment: dev\n",
            &[(
                "OTEL_ANOMALY_EXPORT__OTLP__ENDPOINT",
                "http://127.0.0.1:4317",
            )],
        )
        .unwrap();
        let t = cfg.otlp.unwrap();
        assert_eq!(t.settings.protocol, OtlpProtocol::Grpc);
        assert_eq!(
            t.endpoint(crate::telemetry::Signal::logs),
            Some("http://127.0.0.1:4317")
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_without_file() {
        let c = resolve(None, &BTreeMap::new(), &FlagOverrides::default()).unwrap();
        assert_eq!(c.settings, Settings::default());
        assert_eq!(c.settings.receiver.grpc.listen.port(), 4317);
        assert_eq!(c.settings.receiver.http.listen.port(), 4318);
        assert!(c.settings.export.elasticsearch.is_none());
    }

    #[test]
    fn precedence_is_file_then_env_then_flags() {
        let f = write("environment: staging\npipeline:\n  workers: 3\n  max_queued_records: 10\n");
        let e = env(&[
            ("OTEL_ANOMALY_PIPELINE__WORKERS", "5"),
            ("OTEL_ANOMALY_ENVIRONMENT", "prod"),
            ("OTHER", "x"),
        ]);
        let mut flags = FlagOverrides::default();
        flags.set("environment", Some("dev"));
        let c = resolve(Some(f.path()), &e, &flags).unwrap();
        assert_eq!(c.settings.environment, "dev");
        assert_eq!(c.settings.pipeline.workers, 5);
        assert_eq!(c.settings.pipeline.max_queued_records, 10);
    }

    #[test]
    fn unknown_key_in_file_names_key_and_file() {
        let f = write("receiver:\n  grpcc:\n    listen: 0.0.0.0:1\n");
        let err = resolve(Some(f.path()), &BTreeMap::new(), &FlagOverrides::default()).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, ConfigError::Parse { .. }));
        assert!(msg.contains("grpcc"), "{msg}");
        assert!(msg.contains(&f.path().display().to_string()), "{msg}");
    }

    #[test]
    fn unknown_key_in_env_names_the_variable() {
        let e = env(&[("OTEL_ANOMALY_PIPELINE__WORKRS", "5")]);
        let err = resolve(None, &e, &FlagOverrides::default()).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("OTEL_ANOMALY_PIPELINE__WORKRS") && msg.contains("workrs"),
            "{msg}"
        );
    }

    #[test]
    fn elasticsearch_settings_and_secrets() {
        let key = write("  c2VjcmV0OmtleQ==\n");
        let f = write(&format!(
            "environment: prod\nexport:\n  elasticsearch:\n    urls: [\"https://es.example:9200\"]\n    api_key_file: {}\n    bulk:\n      flush_interval: 250ms\n",
            key.path().display()
        ));
        let c = resolve(Some(f.path()), &BTreeMap::new(), &FlagOverrides::default()).unwrap();
        let es = c.settings.export.elasticsearch.as_ref().unwrap();
        assert_eq!(es.bulk.flush_interval, Duration::from_millis(250));
        assert_eq!(es.mode, IndexMode::DataStream);
        assert_eq!(
            c.es_credentials,
            Some(EsCredentials::ApiKey(Secret("c2VjcmV0OmtleQ==".into())))
        );
        assert!(
            !format!("{c:?}").contains("c2VjcmV0OmtleQ"),
            "secret leaked into Debug"
        );
    }

    #[test]
    fn invalid_values_are_explained() {
        let cases = [
            ("environment: Prod-1\n", "environment"),
            (
                "export:\n  elasticsearch:\n    urls: [\"ftp://x\"]\n",
                "export.elasticsearch.urls",
            ),
            (
                "receiver:\n  max_request_bytes: 0\n",
                "receiver.max_request_bytes",
            ),
            (
                "export:\n  elasticsearch:\n    username: u\n",
                "export.elasticsearch.password_file",
            ),
        ];
        for (text, key) in cases {
            let f = write(text);
            let err =
                resolve(Some(f.path()), &BTreeMap::new(), &FlagOverrides::default()).unwrap_err();
            assert!(err.to_string().contains(key), "{text:?} gave {err}");
        }
    }

    #[test]
    fn missing_file_and_bad_yaml_are_clear() {
        let err = resolve(
            Some(Path::new("/nonexistent/x.yaml")),
            &BTreeMap::new(),
            &FlagOverrides::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/x.yaml"));
        let f = write("receiver: [unclosed\n");
        let err = resolve(Some(f.path()), &BTreeMap::new(), &FlagOverrides::default()).unwrap_err();
        assert!(matches!(err, ConfigError::Parse { .. }), "{err}");
    }
}
