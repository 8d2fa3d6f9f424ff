//! Helpers of the aggregator tests: a real aggregator on 127.0.0.1:0 with
//! token files in a temp directory, events, and a raw push client.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use otel_anomaly::aggregator::{self, config, Running};
use otel_anomaly::push::proto::push_client::PushClient;
use otel_anomaly::push::proto::{AnomalyEvent, PushEventsRequest, PushEventsResponse, Severity};
use tokio_util::sync::CancellationToken;

pub const DEV_TOKEN: &str = "dev-token-0123456789";
pub const PROD_TOKEN: &str = "prod-token-9876543210";
pub const EXPIRED_TOKEN: &str = "expired-token-000000";
pub const READER_USER: &str = "sre";
pub const READER_PASSWORD: &str = "reader-pw";
pub const ADMIN_TOKEN: &str = "admin-token-abcdef";

/// Writes token files and an aggregator config into `dir`; `extra` is appended YAML.
pub fn write_config(dir: &Path, extra: &str) -> PathBuf {
    for (name, text) in [
        ("dev.token", DEV_TOKEN),
        ("prod.token", PROD_TOKEN),
        ("expired.token", EXPIRED_TOKEN),
        ("reader.pw", READER_PASSWORD),
        ("admin.token", ADMIN_TOKEN),
    ] {
        std::fs::write(dir.join(name), format!("{text}\n")).expect("write secret");
    }
    let d = dir.display();
    let text = format!(
        "data_dir: {d}/data
grpc: {{listen: '127.0.0.1:0'}}
http: {{listen: '127.0.0.1:0', username: {READER_USER}, password_file: {d}/reader.pw, admin_token_file: {d}/admin.token}}
sidecars:
  - {{name: dev-1, environment: dev, token_file: {d}/dev.token}}
  - {{name: prod-eu, environment: prod, cluster: eu, token_file: {d}/prod.token}}
  - {{name: old, environment: prod, token_file: {d}/expired.token, expires_at: '2020-01-01T00:00:00Z'}}
shutdown_timeout: 5s
{extra}"
    );
    let path = dir.join("aggregator.yaml");
    std::fs::write(&path, text).expect("write config");
    path
}

/// A running aggregator.
pub struct Agg {
    pub running: Running,
    pub token: CancellationToken,
    pub http: reqwest::Client,
}

impl Agg {
    /// Starts the real aggregator from `config_path`.
    pub async fn start(config_path: &Path) -> Agg {
        let cfg = config::load(config_path).expect("aggregator config");
        Self::start_with(cfg).await
    }

    pub async fn start_with(cfg: config::AggregatorConfig) -> Agg {
        let token = CancellationToken::new();
        let running = aggregator::start(cfg, token.clone())
            .await
            .expect("aggregator starts");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .no_proxy()
            .build()
            .expect("http client");
        Agg {
            running,
            token,
            http,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.running.http_addr)
    }

    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.running.grpc_addr)
    }

    /// GET with the reader's credentials; returns status and JSON (Null if not JSON).
    pub async fn get(&self, path: &str) -> (u16, serde_json::Value) {
        let r = self
            .http
            .get(self.url(path))
            .basic_auth(READER_USER, Some(READER_PASSWORD))
            .send()
            .await
            .expect("GET");
        let status = r.status().as_u16();
        let body = r.text().await.unwrap_or_default();
        (
            status,
            serde_json::from_str(&body).unwrap_or(serde_json::Value::Null),
        )
    }

    /// Stops and waits for the shutdown to finish.
    pub async fn stop(self) {
        self.token.cancel();
        tokio::time::timeout(Duration::from_secs(15), self.running.done)
            .await
            .expect("aggregator stops in time")
            .expect("shutdown task");
    }
}

pub fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_nanos() as u64
}

/// An event that ended now and lasted a minute.
pub fn event(id: &str, env: &str, service: &str, key: &str, score: f64) -> AnomalyEvent {
    let end = now_nanos();
    let severity = if score >= 75.0 {
        Severity::Critical
    } else if score >= 50.0 {
        Severity::Major
    } else {
        Severity::Minor
    };
    AnomalyEvent {
        event_id: id.into(),
        environment: env.into(),
        cluster: String::new(),
        service: service.into(),
        signal: "traces".into(),
        key: key.into(),
        start_unix_nano: end - 60_000_000_000,
        end_unix_nano: end,
        score,
        severity: severity as i32,
        explanation: format!("p99 of {key} 870 ms vs baseline 120 ms"),
        baseline: 120.0,
        observed: 870.0,
        unit: "ms".into(),
        exemplar_trace_ids: vec!["4bf92f3577b34da6a3ce929d0e0e4736".into()],
        backfilled: false,
    }
}

/// A push client without the buffering layer, for status checks.
pub async fn raw_client(url: String) -> PushClient<tonic::transport::Channel> {
    PushClient::connect(url).await.expect("connect to push api")
}

/// Sends one batch as `token`.
pub async fn push(
    client: &mut PushClient<tonic::transport::Channel>,
    token: Option<&str>,
    events: Vec<AnomalyEvent>,
) -> Result<PushEventsResponse, tonic::Status> {
    let mut req = tonic::Request::new(PushEventsRequest {
        sidecar_id: "test".into(),
        events,
    });
    if let Some(t) = token {
        req.metadata_mut().insert(
            "authorization",
            format!("Bearer {t}").parse().expect("ascii"),
        );
    }
    client.push_events(req).await.map(|r| r.into_inner())
}

/// A sidecar configuration (loopback listeners and data under `dir`, one
/// worker) whose `push:` section points at `url` with `token`, set through the
/// `OTEL_ANOMALY_*` overrides as an operator would; `extra` adds overrides.
pub fn pushing_sidecar_config(
    dir: &Path,
    environment: &str,
    token: &str,
    url: &str,
    extra: &[(&str, &str)],
) -> otel_anomaly::config::Config {
    let token_file = dir.join(format!("{environment}-client.token"));
    std::fs::write(&token_file, token).unwrap();
    let mut env: std::collections::BTreeMap<String, String> = [
        ("OTEL_ANOMALY_ENVIRONMENT", environment.to_string()),
        ("OTEL_ANOMALY_PUSH__URL", url.to_string()),
        (
            "OTEL_ANOMALY_PUSH__TOKEN_FILE",
            token_file.display().to_string(),
        ),
        ("OTEL_ANOMALY_PUSH__HEARTBEAT_INTERVAL", "200ms".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    for (k, v) in extra {
        env.insert(k.to_string(), v.to_string());
    }
    let mut cfg =
        otel_anomaly::config::resolve(None, &env, &otel_anomaly::config::FlagOverrides::default())
            .expect("sidecar config");
    let base = crate::common::base_config(dir);
    cfg.settings.receiver = base.settings.receiver.clone();
    cfg.settings.admin = base.settings.admin.clone();
    cfg.settings.data_dir = base.settings.data_dir.clone();
    cfg.settings.pipeline.workers = 1;
    cfg.settings.shutdown_timeout = Duration::from_secs(5);
    cfg
}
