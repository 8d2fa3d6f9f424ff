//! An aggregator for `otel-anomaly demo`: loopback only, readers without
//! credentials, one freshly generated sidecar token per environment.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::config::{self, AggregatorSettings, HttpSettings, IncidentSettings, SidecarToken};
use super::{start, Running};

/// Errors starting the demo aggregator.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("cannot write demo token {path}: {source}")]
    Token {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Start(#[from] super::StartError),
}

/// A running demo aggregator and the token file of each environment.
pub struct DemoAggregator {
    pub running: Running,
    pub tokens: BTreeMap<String, PathBuf>,
}

impl DemoAggregator {
    /// The push API URL for sidecars.
    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.running.grpc_addr)
    }

    /// The dashboard URL.
    pub fn dashboard_url(&self) -> String {
        format!("http://{}/", self.running.http_addr)
    }
}

/// Starts an aggregator on loopback with its store under `dir`.
pub async fn start_demo(
    dir: &Path,
    environments: &[String],
    http_listen: SocketAddr,
    shutdown: CancellationToken,
) -> Result<DemoAggregator, DemoError> {
    let token_dir = dir.join("tokens");
    std::fs::create_dir_all(&token_dir).map_err(|source| DemoError::Token {
        path: token_dir.display().to_string(),
        source,
    })?;
    let mut tokens = BTreeMap::new();
    let mut sidecars = Vec::new();
    for env in environments {
        let path = token_dir.join(format!("{env}.token"));
        let token: String = (0..32)
            .map(|_| char::from(b"abcdefghijklmnopqrstuvwxyz0123456789"[rand::random_range(0..36)]))
            .collect();
        std::fs::write(&path, token).map_err(|source| DemoError::Token {
            path: path.display().to_string(),
            source,
        })?;
        sidecars.push(SidecarToken {
            name: format!("{env}-sidecar"),
            environment: env.clone(),
            cluster: None,
            token_file: path.clone(),
            expires_at: None,
        });
        tokens.insert(env.clone(), path);
    }
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let settings = AggregatorSettings {
        data_dir: dir.to_path_buf(),
        grpc: config::GrpcSettings {
            listen: loopback,
            ..Default::default()
        },
        http: HttpSettings {
            listen: http_listen,
            anonymous: true,
            ..Default::default()
        },
        sidecars,
        incidents: IncidentSettings {
            resolve_after: Duration::from_secs(120),
            sweep_interval: Duration::from_secs(5),
            ..Default::default()
        },
        ..Default::default()
    };
    let cfg = config::validate(settings, "demo".into())?;
    let running = start(cfg, shutdown).await?;
    Ok(DemoAggregator { running, tokens })
}
