//! The aggregator's configuration file: typed, `deny_unknown_fields`,
//! humantime durations, secrets only from files, validated once into an
//! [`AggregatorConfig`]. Same conventions as the sidecar's `src/config.rs`.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::Deserialize;

use crate::config::{invalid, read_secret, ConfigError, LogSettings, Secret};

/// The whole aggregator configuration file.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AggregatorSettings {
    /// Directory of the SQLite store.
    pub data_dir: PathBuf,
    /// Push API (gRPC) for sidecars.
    pub grpc: GrpcSettings,
    /// REST API, live stream, OpenAPI document and dashboard.
    pub http: HttpSettings,
    /// Sidecars allowed to push, one token each.
    pub sidecars: Vec<SidecarToken>,
    pub ingest: IngestSettings,
    pub incidents: IncidentSettings,
    pub alerts: AlertSettings,
    pub log: LogSettings,
    /// Deadline for the staged shutdown.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
}

impl Default for AggregatorSettings {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("otel-anomaly-aggregator-data"),
            grpc: GrpcSettings::default(),
            http: HttpSettings::default(),
            sidecars: Vec::new(),
            ingest: IngestSettings::default(),
            incidents: IncidentSettings::default(),
            alerts: AlertSettings::default(),
            log: LogSettings::default(),
            shutdown_timeout: Duration::from_secs(10),
        }
    }
}

/// The push API listener.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GrpcSettings {
    pub listen: SocketAddr,
    /// TLS certificate chain (PEM); with `key_file`, the listener speaks TLS only.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// TLS in the shape every listener uses (with optional mTLS and reload);
    /// `cert_file`/`key_file` above are the older spelling of the same.
    pub tls: Option<crate::tls::TlsSettings>,
}

impl GrpcSettings {
    /// The listener's TLS settings, from `tls` or the older `cert_file`/`key_file`.
    pub fn tls_settings(&self) -> Option<crate::tls::TlsSettings> {
        match (&self.tls, &self.cert_file, &self.key_file) {
            (Some(t), _, _) => Some(t.clone()),
            (None, Some(c), Some(k)) => Some(crate::tls::TlsSettings::new(c.clone(), k.clone())),
            _ => None,
        }
    }
}

impl Default for GrpcSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 4320)),
            cert_file: None,
            key_file: None,
            tls: None,
        }
    }
}

/// REST API and dashboard listener, and who may read it.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSettings {
    pub listen: SocketAddr,
    /// Bearer token for readers (file).
    pub token_file: Option<PathBuf>,
    /// Basic auth user for readers, with `password_file`.
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
    /// Serve without authentication (only sensible on loopback or behind a proxy that checks).
    pub anonymous: bool,
    /// External URL of the dashboard, for links in alerts (default: http://<listen>).
    pub external_url: Option<String>,
    /// Bearer token (file) that may also create and end silences and maintenance windows.
    pub admin_token_file: Option<PathBuf>,
    /// TLS (and mTLS with `client_ca_file`) on the REST API and dashboard.
    pub tls: Option<crate::tls::TlsSettings>,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            token_file: None,
            username: None,
            password_file: None,
            anonymous: false,
            external_url: None,
            admin_token_file: None,
            tls: None,
        }
    }
}

/// One sidecar's credentials.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SidecarToken {
    /// Name for logs and the API (never the token).
    pub name: String,
    /// The only environment this token may push for.
    pub environment: String,
    /// If set, the only cluster this token may push for.
    #[serde(default)]
    pub cluster: Option<String>,
    /// File holding the bearer token.
    pub token_file: PathBuf,
    /// After this instant (RFC 3339) the token is refused.
    #[serde(default)]
    pub expires_at: Option<String>,
}

/// Limits on what sidecars send.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct IngestSettings {
    /// Most events in one push call.
    pub max_batch_events: usize,
    /// Largest push message, bytes.
    pub max_message_bytes: usize,
    /// Events and resolved incidents older than this are deleted.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// A sidecar without a heartbeat for this long is shown as stale.
    #[serde(with = "humantime_serde")]
    pub sidecar_stale_after: Duration,
}

impl Default for IngestSettings {
    fn default() -> Self {
        Self {
            max_batch_events: 1000,
            max_message_bytes: 4 << 20,
            retention: Duration::from_secs(30 * 24 * 3600),
            sidecar_stale_after: Duration::from_secs(60),
        }
    }
}

/// How events group into incidents (see `store.rs` for the rule).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct IncidentSettings {
    /// An incident resolves after this long without a new member event; events this close in time group.
    #[serde(with = "humantime_serde")]
    pub resolve_after: Duration,
    /// An incident open this long is closed as persistent (a level shift); its keys stay muted until quiet.
    #[serde(with = "humantime_serde")]
    pub max_duration: Duration,
    /// How often open incidents are checked for resolution and retention applied.
    #[serde(with = "humantime_serde")]
    pub sweep_interval: Duration,
}

impl Default for IncidentSettings {
    fn default() -> Self {
        Self {
            resolve_after: Duration::from_secs(300),
            max_duration: Duration::from_secs(2 * 3600),
            sweep_interval: Duration::from_secs(10),
        }
    }
}

/// Lowest severity that alerts.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, PartialOrd, Ord, Default)]
#[serde(rename_all = "snake_case")]
pub enum MinSeverity {
    Minor,
    #[default]
    Major,
    Critical,
}

impl MinSeverity {
    /// Rank on the store's scale (minor 1, major 2, critical 3).
    pub fn rank(self) -> i64 {
        match self {
            MinSeverity::Minor => 1,
            MinSeverity::Major => 2,
            MinSeverity::Critical => 3,
        }
    }
}

/// Where alerts go.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AlertSettings {
    /// How often open incidents are (re)sent and resolutions checked.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    pub alertmanager: Option<AlertmanagerSettings>,
    pub webhooks: Vec<WebhookSettings>,
}

impl Default for AlertSettings {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(30),
            alertmanager: None,
            webhooks: Vec::new(),
        }
    }
}

/// Prometheus Alertmanager (v2 API).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AlertmanagerSettings {
    /// Base URL, e.g. `http://alertmanager:9093`.
    pub url: String,
    /// Environments routed here (empty: all).
    #[serde(default)]
    pub environments: Vec<String>,
    #[serde(default)]
    pub min_severity: MinSeverity,
    /// Timeout of one request.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

/// Body format of a webhook.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum WebhookFormat {
    /// The incident as JSON with a `status` field.
    #[default]
    Json,
    /// `{"text": …}`, as Slack incoming webhooks take it.
    Slack,
}

/// A generic webhook.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WebhookSettings {
    pub url: String,
    #[serde(default)]
    pub format: WebhookFormat,
    #[serde(default)]
    pub environments: Vec<String>,
    #[serde(default)]
    pub min_severity: MinSeverity,
    /// Attempts per notification before it is given up (and logged).
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_attempts() -> u32 {
    5
}

/// A sidecar's credentials, checked.
#[derive(Debug, Clone)]
pub struct TokenEntry {
    pub name: String,
    pub environment: String,
    pub cluster: Option<String>,
    pub token: Secret,
    pub expires_at: Option<SystemTime>,
}

/// How readers authenticate.
#[derive(Debug, Clone)]
pub enum ApiAuth {
    Anonymous,
    Bearer(Secret),
    Basic { username: String, password: Secret },
}

/// The checked aggregator configuration.
#[derive(Debug, Clone)]
pub struct AggregatorConfig {
    pub settings: AggregatorSettings,
    pub tokens: Vec<TokenEntry>,
    pub api_auth: ApiAuth,
    /// Token for writes (silences, maintenance windows), if configured.
    pub admin_token: Option<Secret>,
    /// Where the settings came from, for messages.
    pub source: String,
}

impl AggregatorConfig {
    /// Path of the SQLite file.
    pub fn store_path(&self) -> PathBuf {
        self.settings.data_dir.join("aggregator.sqlite")
    }

    /// Environments that have at least one sidecar token.
    pub fn environments(&self) -> BTreeSet<String> {
        self.tokens.iter().map(|t| t.environment.clone()).collect()
    }
}

/// Reads and checks a configuration file.
pub fn load(path: &Path) -> Result<AggregatorConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let settings: AggregatorSettings = if text.trim().is_empty() {
        AggregatorSettings::default()
    } else {
        serde_yaml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })?
    };
    validate(settings, path.display().to_string())
}

fn check_url(key: &str, u: &str) -> Result<(), ConfigError> {
    let parsed = url::Url::parse(u).map_err(|e| invalid(key, format!("{u:?}: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(invalid(key, format!("{u:?}: scheme must be http or https")));
    }
    Ok(())
}

fn check_name(key: &str, v: &str) -> Result<(), ConfigError> {
    if v.is_empty()
        || !v
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '.')
    {
        return Err(invalid(
            key,
            format!("{v:?} must be non-empty lowercase letters, digits, '_' or '.' (as the sidecar's environment)"),
        ));
    }
    Ok(())
}

/// Checks settings and reads their secret files.
pub fn validate(
    settings: AggregatorSettings,
    source: String,
) -> Result<AggregatorConfig, ConfigError> {
    let s = &settings;
    let mut tokens = Vec::with_capacity(s.sidecars.len());
    let mut names = BTreeSet::new();
    for (i, sc) in s.sidecars.iter().enumerate() {
        let key = format!("sidecars[{i}]");
        if sc.name.is_empty() || !names.insert(sc.name.clone()) {
            return Err(invalid(
                &key,
                format!("name {:?} is empty or not unique", sc.name),
            ));
        }
        check_name(&format!("{key}.environment"), &sc.environment)?;
        let expires_at = match &sc.expires_at {
            Some(t) => Some(humantime::parse_rfc3339_weak(t).map_err(|e| {
                invalid(
                    &format!("{key}.expires_at"),
                    format!("{t:?}: {e} (RFC 3339, e.g. 2027-01-31T00:00:00Z)"),
                )
            })?),
            None => None,
        };
        let token = read_secret(&format!("{key}.token_file"), &sc.token_file)?;
        tokens.push(TokenEntry {
            name: sc.name.clone(),
            environment: sc.environment.clone(),
            cluster: sc.cluster.clone(),
            token,
            expires_at,
        });
    }
    for (i, a) in tokens.iter().enumerate() {
        for b in &tokens[i + 1..] {
            if a.token == b.token {
                return Err(invalid(
                    "sidecars",
                    format!(
                        "{} and {} share a token; give each sidecar its own",
                        a.name, b.name
                    ),
                ));
            }
        }
    }
    match (&s.grpc.cert_file, &s.grpc.key_file) {
        (Some(c), Some(k)) => {
            for (key, p) in [("grpc.cert_file", c), ("grpc.key_file", k)] {
                if !p.is_file() {
                    return Err(invalid(key, format!("{} is not a file", p.display())));
                }
            }
        }
        (None, None) => {}
        _ => {
            return Err(invalid(
                "grpc",
                "give both cert_file and key_file, or neither",
            ))
        }
    }
    if s.grpc.tls.is_some() && s.grpc.cert_file.is_some() {
        return Err(invalid(
            "grpc.tls",
            "give either tls or cert_file/key_file, not both",
        ));
    }
    for (key, tls) in [("grpc.tls", &s.grpc.tls), ("http.tls", &s.http.tls)] {
        if let Some(t) = tls {
            crate::tls::check_files(key, t).map_err(|m| invalid(key, m))?;
        }
    }
    let h = &s.http;
    let api_auth = match (&h.token_file, &h.username, &h.password_file, h.anonymous) {
        (Some(_), Some(_), _, _) => {
            return Err(invalid(
                "http",
                "give either token_file or username/password_file, not both",
            ))
        }
        (Some(p), None, None, false) => ApiAuth::Bearer(read_secret("http.token_file", p)?),
        (None, Some(u), Some(p), false) => ApiAuth::Basic {
            username: u.clone(),
            password: read_secret("http.password_file", p)?,
        },
        (None, None, None, true) => ApiAuth::Anonymous,
        (None, Some(_), None, _) => {
            return Err(invalid("http.password_file", "required with username"))
        }
        (None, None, Some(_), _) => {
            return Err(invalid("http.username", "required with password_file"))
        }
        (None, None, None, false) => {
            return Err(invalid(
                "http",
                "set token_file or username/password_file for readers, or anonymous: true",
            ))
        }
        _ => {
            return Err(invalid(
                "http.anonymous",
                "cannot be combined with credentials",
            ))
        }
    };
    if let Some(u) = &h.external_url {
        check_url("http.external_url", u)?;
    }
    let admin_token = match &h.admin_token_file {
        Some(p) => Some(read_secret("http.admin_token_file", p)?),
        None => None,
    };
    if s.ingest.max_batch_events == 0 || s.ingest.max_message_bytes < 1024 {
        return Err(invalid(
            "ingest",
            "max_batch_events must be greater than 0 and max_message_bytes at least 1024",
        ));
    }
    if s.ingest.retention.is_zero() || s.ingest.sidecar_stale_after.is_zero() {
        return Err(invalid(
            "ingest",
            "retention and sidecar_stale_after must be greater than 0",
        ));
    }
    let inc = &s.incidents;
    if inc.resolve_after.is_zero()
        || inc.sweep_interval.is_zero()
        || inc.max_duration <= inc.resolve_after
    {
        return Err(invalid(
            "incidents",
            "resolve_after and sweep_interval must be greater than 0, and max_duration greater than resolve_after",
        ));
    }
    if s.alerts.interval.is_zero() {
        return Err(invalid("alerts.interval", "must be greater than 0"));
    }
    if let Some(am) = &s.alerts.alertmanager {
        check_url("alerts.alertmanager.url", &am.url)?;
        for e in &am.environments {
            check_name("alerts.alertmanager.environments", e)?;
        }
    }
    for (i, w) in s.alerts.webhooks.iter().enumerate() {
        check_url(&format!("alerts.webhooks[{i}].url"), &w.url)?;
        if w.max_attempts == 0 {
            return Err(invalid(
                &format!("alerts.webhooks[{i}].max_attempts"),
                "must be at least 1",
            ));
        }
        for e in &w.environments {
            check_name(&format!("alerts.webhooks[{i}].environments"), e)?;
        }
    }
    Ok(AggregatorConfig {
        settings,
        tokens,
        api_auth,
        admin_token,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::File::create(&p)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .unwrap();
        p
    }

    #[test]
    fn full_file_loads_and_secrets_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        file(d, "dev.token", "dev-secret\n");
        file(d, "prod.token", "prod-secret");
        file(d, "pw", "hunter2");
        let cfg = file(
            d,
            "agg.yaml",
            &format!(
                "data_dir: {0}/data\nhttp: {{listen: 127.0.0.1:0, username: sre, password_file: {0}/pw}}\n\
                 sidecars:\n  - {{name: dev-eu, environment: dev, token_file: {0}/dev.token}}\n  - {{name: prod-eu, environment: prod, cluster: eu, token_file: {0}/prod.token, expires_at: '2030-01-01T00:00:00Z'}}\n\
                 incidents: {{resolve_after: 2m}}\nalerts: {{alertmanager: {{url: 'http://127.0.0.1:9093', min_severity: critical}}}}\n",
                d.display()
            ),
        );
        let c = load(&cfg).unwrap();
        assert_eq!(c.tokens.len(), 2);
        assert_eq!(c.tokens[0].token.expose(), "dev-secret");
        assert_eq!(c.tokens[1].cluster.as_deref(), Some("eu"));
        assert!(c.tokens[1].expires_at.is_some());
        assert!(matches!(c.api_auth, ApiAuth::Basic { .. }));
        assert_eq!(c.settings.incidents.resolve_after, Duration::from_secs(120));
        assert_eq!(
            c.settings.alerts.alertmanager.unwrap().min_severity,
            MinSeverity::Critical
        );
        // tokens never show in Debug output
        assert!(!format!("{:?}", c.tokens).contains("dev-secret"));
    }

    #[test]
    fn errors_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        file(d, "t", "x");
        let cases = [
            ("bogus: 1\n", "bogus"),
            ("http: {anonymous: false}\n", "http"),
            ("http: {anonymous: true}\nsidecars: [{name: a, environment: Dev, token_file: /nonexistent}]\n", "sidecars[0].environment"),
            ("http: {anonymous: true}\nsidecars: [{name: a, environment: dev, token_file: /nonexistent}]\n", "sidecars[0].token_file"),
            ("http: {anonymous: true}\ngrpc: {cert_file: /x}\n", "grpc"),
            ("http: {anonymous: true}\nincidents: {resolve_after: 1h, max_duration: 30m}\n", "incidents"),
            ("http: {anonymous: true}\nalerts: {alertmanager: {url: 'ftp://x'}}\n", "alerts.alertmanager.url"),
            ("http: {anonymous: true}\ningest: {retention: 3 parsecs}\n", "retention"),
        ];
        for (text, key) in cases {
            let p = file(d, "c.yaml", text);
            let err = load(&p).unwrap_err().to_string();
            assert!(err.contains(key), "{text:?}: {err}");
        }
        let p = file(
            d,
            "dup.yaml",
            &format!(
                "http: {{anonymous: true}}\nsidecars: [{{name: a, environment: dev, token_file: {0}/t}}, {{name: b, environment: prod, token_file: {0}/t}}]\n",
                d.display()
            ),
        );
        assert!(load(&p).unwrap_err().to_string().contains("share a token"));
    }
}
