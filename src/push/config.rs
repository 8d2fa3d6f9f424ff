//! The sidecar's `push:` section: where and how anomaly events go to the aggregator.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::config::{invalid, read_secret, ConfigError, Secret};

/// Push of anomaly events to the aggregator; off while `url` is unset.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PushSettings {
    /// Aggregator push API, `http://host:port` or `https://host:port`.
    pub url: Option<String>,
    /// File holding this sidecar's bearer token (required with `url`).
    pub token_file: Option<PathBuf>,
    /// CA certificate (PEM) that signed the aggregator's certificate, for `https` URLs.
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for an aggregator that requires mTLS, with `client_key_file`.
    pub client_cert_file: Option<PathBuf>,
    /// Private key (PEM) of `client_cert_file`.
    pub client_key_file: Option<PathBuf>,
    /// Name this sidecar reports in heartbeats (default: `<environment>` or `<environment>/<cluster>`).
    pub sidecar_id: Option<String>,
    /// Events held while the aggregator is unreachable; past it the oldest are dropped and counted.
    pub buffer_events: usize,
    /// Most events in one push call.
    pub batch_events: usize,
    /// Heartbeat period.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// Timeout of one call.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// First retry delay; doubles up to `max_backoff`, with jitter.
    #[serde(with = "humantime_serde")]
    pub initial_backoff: Duration,
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
}

impl Default for PushSettings {
    fn default() -> Self {
        Self {
            url: None,
            token_file: None,
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
            sidecar_id: None,
            buffer_events: 10_000,
            batch_events: 500,
            heartbeat_interval: Duration::from_secs(15),
            timeout: Duration::from_secs(10),
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(30),
        }
    }
}

/// Checks the section; returns the token when push is on.
pub(crate) fn validate(p: &PushSettings) -> Result<Option<Secret>, ConfigError> {
    let Some(url) = &p.url else {
        if p.token_file.is_some() || p.ca_file.is_some() {
            return Err(invalid(
                "push.url",
                "required when push.token_file or push.ca_file is set",
            ));
        }
        return Ok(None);
    };
    let parsed = url::Url::parse(url).map_err(|e| invalid("push.url", format!("{url:?}: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(invalid(
            "push.url",
            format!("{url:?}: scheme must be http or https"),
        ));
    }
    if p.ca_file.is_some() && parsed.scheme() != "https" {
        return Err(invalid("push.ca_file", "only used with an https push.url"));
    }
    if let Some(ca) = &p.ca_file {
        if !ca.is_file() {
            return Err(invalid(
                "push.ca_file",
                format!("{} is not a file", ca.display()),
            ));
        }
    }
    match (&p.client_cert_file, &p.client_key_file) {
        (Some(c), Some(k)) => {
            if parsed.scheme() != "https" {
                return Err(invalid(
                    "push.client_cert_file",
                    "only used with an https push.url",
                ));
            }
            for (key, f) in [("push.client_cert_file", c), ("push.client_key_file", k)] {
                if !f.is_file() {
                    return Err(invalid(key, format!("{} is not a file", f.display())));
                }
            }
        }
        (None, None) => {}
        _ => {
            return Err(invalid(
                "push",
                "give both client_cert_file and client_key_file, or neither",
            ))
        }
    }
    if p.buffer_events == 0 || p.batch_events == 0 {
        return Err(invalid(
            "push",
            "buffer_events and batch_events must be greater than 0",
        ));
    }
    if p.heartbeat_interval.is_zero() || p.timeout.is_zero() || p.initial_backoff.is_zero() {
        return Err(invalid(
            "push",
            "heartbeat_interval, timeout and initial_backoff must be greater than 0",
        ));
    }
    if p.max_backoff < p.initial_backoff {
        return Err(invalid(
            "push.max_backoff",
            "must be at least push.initial_backoff",
        ));
    }
    let Some(token_file) = &p.token_file else {
        return Err(invalid("push.token_file", "required with push.url"));
    };
    read_secret("push.token_file", token_file).map(Some)
}

/// Turns push on in a checked configuration (the demo's wiring): sets the URL and token file and reads the token.
pub fn enable(
    cfg: &mut crate::config::Config,
    url: String,
    token_file: PathBuf,
) -> Result<(), ConfigError> {
    let mut push = cfg.settings.push.clone();
    push.url = Some(url);
    push.token_file = Some(token_file);
    let token = validate(&push)?;
    cfg.settings.push = push;
    cfg.push_token = token;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use crate::config::{resolve, FlagOverrides};

    fn with(pairs: &[(&str, &str)]) -> Result<crate::config::Config, crate::config::ConfigError> {
        let env: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (format!("OTEL_ANOMALY_PUSH__{k}"), v.to_string()))
            .collect();
        resolve(None, &env, &FlagOverrides::default())
    }

    #[test]
    fn off_by_default_and_checked_when_on() {
        let cfg = with(&[]).unwrap();
        assert_eq!(cfg.settings.push.url, None);
        assert!(cfg.push_token.is_none());

        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("t");
        std::fs::write(&token, "s3cret\n").unwrap();
        let t = token.display().to_string();
        let cfg = with(&[
            ("URL", "http://agg:4320"),
            ("TOKEN_FILE", &t),
            ("BUFFER_EVENTS", "7"),
        ])
        .unwrap();
        assert_eq!(cfg.push_token.as_ref().unwrap().expose(), "s3cret");
        assert_eq!(cfg.settings.push.buffer_events, 7);
        assert!(!format!("{cfg:?}").contains("s3cret"));

        let cases: [(&[(&str, &str)], &str); 6] = [
            (&[("URL", "http://agg:4320")], "push.token_file"),
            (&[("TOKEN_FILE", &t)], "push.url"),
            (&[("URL", "ftp://agg"), ("TOKEN_FILE", &t)], "scheme"),
            (
                &[("URL", "http://agg"), ("TOKEN_FILE", &t), ("CA_FILE", &t)],
                "push.ca_file",
            ),
            (
                &[
                    ("URL", "http://agg"),
                    ("TOKEN_FILE", &t),
                    ("BUFFER_EVENTS", "0"),
                ],
                "buffer_events",
            ),
            (
                &[("URL", "http://agg"), ("TOKEN_FILE", "/nonexistent/token")],
                "push.token_file",
            ),
        ];
        for (pairs, key) in cases {
            let err = with(pairs).unwrap_err().to_string();
            assert!(err.contains(key), "{pairs:?}: {err}");
        }
    }
}
