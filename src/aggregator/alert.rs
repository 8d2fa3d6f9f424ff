//! Alerts: every `alerts.interval`, open incidents (at or above each target's
//! minimum severity, in its environments) are sent to Prometheus Alertmanager
//! (v2 API) and resolved ones are sent once with `endsAt` in the past, which
//! resolves the alert there; Alertmanager itself dedups by labels. Webhooks
//! get one notification per state change, each from its own bounded queue
//! with retries and backoff. None of this runs on the ingest path: a slow or
//! absent target never delays a push.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::json;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::config::{AlertSettings, AlertmanagerSettings, WebhookFormat, WebhookSettings};
use super::store::{severity_rank, Incident, Store};
use super::AggMetrics;

/// The alert name every incident alert carries.
pub const ALERT_NAME: &str = "OtelAnomalyIncident";
/// Notifications a webhook may have waiting before new ones are dropped (and counted).
const WEBHOOK_QUEUE: usize = 1000;

fn rfc3339_ms(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_millis(t).to_string()
}

fn link(base: &str, id: i64) -> String {
    format!("{}/#/incidents/{id}", base.trim_end_matches('/'))
}

fn routed(environments: &[String], min_rank: i64, inc: &Incident) -> bool {
    (environments.is_empty() || environments.contains(&inc.environment))
        && severity_rank(inc.severity).unwrap_or(0) >= min_rank
}

/// The Alertmanager v2 alert of an incident; `now_ms` sets how long an open alert stays firing
/// without a resend.
pub fn alertmanager_alert(
    inc: &Incident,
    base_url: &str,
    now_ms: i64,
    hold: Duration,
) -> serde_json::Value {
    let ends = match inc.resolved_ms {
        Some(resolved) => resolved,
        None => now_ms + hold.as_millis() as i64,
    };
    json!({
        "labels": {
            "alertname": ALERT_NAME,
            "environment": inc.environment,
            "service": inc.service,
            "signal": inc.signal,
            "severity": inc.severity,
            "incident_id": inc.id.to_string(),
        },
        "annotations": {
            "summary": format!("{} in {}: {}", inc.severity, inc.environment, inc.key),
            "description": inc.explanation,
            "services": inc.services.join(", "),
            "score": format!("{:.1}", inc.max_score),
            "dashboard": link(base_url, inc.id),
        },
        "startsAt": rfc3339_ms(inc.start_ms),
        "endsAt": rfc3339_ms(ends),
        "generatorURL": link(base_url, inc.id),
    })
}

/// The body of a webhook notification.
pub fn webhook_body(format: WebhookFormat, inc: &Incident, base_url: &str) -> serde_json::Value {
    let status = if inc.state == "open" {
        "firing"
    } else {
        "resolved"
    };
    match format {
        WebhookFormat::Json => json!({
            "status": status,
            "incident": inc,
            "dashboard_url": link(base_url, inc.id),
        }),
        WebhookFormat::Slack => json!({
            "text": format!(
                "[{}] {} {} incident #{}: {} (score {:.0}): {} <{}|open>",
                status.to_uppercase(), inc.severity, inc.environment, inc.id, inc.key,
                inc.max_score, inc.explanation, link(base_url, inc.id)
            ),
        }),
    }
}

struct Notification {
    body: serde_json::Value,
    incident: i64,
}

async fn post_with_retries(
    client: &reqwest::Client,
    url: &str,
    body: &serde_json::Value,
    attempts: u32,
    stop: &CancellationToken,
) -> Result<(), String> {
    let mut wait = Duration::from_millis(500);
    let mut last = String::new();
    for attempt in 0..attempts.max(1) {
        if attempt > 0 {
            tokio::select! {
                _ = tokio::time::sleep(wait.mul_f64(rand::random_range(0.5..=1.0))) => {}
                _ = stop.cancelled() => return Err(format!("shutdown before delivery ({last})")),
            }
            wait = (wait * 2).min(Duration::from_secs(30));
        }
        match client.post(url).json(body).send().await {
            Ok(r) if r.status().is_success() => return Ok(()),
            // 4xx other than 429 will not get better by retrying.
            Ok(r)
                if r.status().is_client_error()
                    && r.status() != reqwest::StatusCode::TOO_MANY_REQUESTS =>
            {
                return Err(format!("HTTP {}", r.status()))
            }
            Ok(r) => last = format!("HTTP {}", r.status()),
            Err(e) => last = e.to_string(),
        }
    }
    Err(last)
}

fn webhook_worker(
    client: reqwest::Client,
    hook: WebhookSettings,
    mut rx: mpsc::Receiver<Notification>,
    metrics: AggMetrics,
    stop: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let n = tokio::select! {
                n = rx.recv() => match n { Some(n) => n, None => break },
                _ = stop.cancelled() => break,
            };
            match post_with_retries(&client, &hook.url, &n.body, hook.max_attempts, &stop).await {
                Ok(()) => metrics.delivery("webhook_ok"),
                Err(e) => {
                    metrics.delivery("webhook_failed");
                    tracing::warn!(incident = n.incident, error = %e, "webhook notification not delivered");
                }
            }
        }
    })
}

/// Starts the alerter (a no-op task when no target is configured).
pub fn spawn(
    settings: &AlertSettings,
    store: Arc<Store>,
    metrics: AggMetrics,
    base_url: String,
    stop: CancellationToken,
) -> Result<JoinHandle<()>, reqwest::Error> {
    let settings = settings.clone();
    if settings.alertmanager.is_none() && settings.webhooks.is_empty() {
        return Ok(tokio::spawn(async move { stop.cancelled().await }));
    }
    let am_client = match &settings.alertmanager {
        Some(am) => Some(reqwest::Client::builder().timeout(am.timeout).build()?),
        None => None,
    };
    let mut hooks = Vec::new();
    for hook in &settings.webhooks {
        let client = reqwest::Client::builder().timeout(hook.timeout).build()?;
        let (tx, rx) = mpsc::channel(WEBHOOK_QUEUE);
        let worker = webhook_worker(client, hook.clone(), rx, metrics.clone(), stop.clone());
        hooks.push((hook.clone(), tx, worker));
    }
    Ok(tokio::spawn(async move {
        let min_rank = settings
            .alertmanager
            .iter()
            .map(|a| a.min_severity.rank())
            .chain(settings.webhooks.iter().map(|w| w.min_severity.rank()))
            .min()
            .unwrap_or(1);
        // Hold an open alert for a few resend periods, so one missed resend does not resolve it.
        let hold = (settings.interval * 4).max(Duration::from_secs(60));
        let mut notified: HashMap<(usize, i64), (&'static str, &'static str)> = HashMap::new();
        // Labels last sent to Alertmanager per open incident: when they change (a higher
        // severity, a new top service), the alert under the old labels is ended.
        let mut am_labels: HashMap<i64, serde_json::Value> = HashMap::new();
        let mut tick = tokio::time::interval(settings.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.cancelled() => break,
            }
            let st = store.clone();
            let read = tokio::task::spawn_blocking(move || {
                let silences = st.silences(super::store::now_ns(), false)?;
                Ok::<_, super::store::StoreError>((st.alertable(min_rank)?, silences))
            });
            let incidents = match read.await {
                Ok(Ok((list, silences))) => {
                    // Silenced incidents (active silence or maintenance window) are not sent;
                    // their resolutions still count as delivered.
                    let active: Vec<_> = silences.into_iter().filter(|s| s.active).collect();
                    list.into_iter()
                        .map(|mut inc| {
                            if inc.state == "open" && active.iter().any(|s| s.matches(&inc)) {
                                inc.state = "silenced";
                            }
                            inc
                        })
                        .collect::<Vec<_>>()
                }
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "reading incidents for alerts failed");
                    continue;
                }
                Err(_) => continue,
            };
            let mut resolved_done: Vec<i64> = incidents
                .iter()
                .filter(|i| i.state == "resolved")
                .map(|i| i.id)
                .collect();
            if let (Some(am), Some(client)) = (&settings.alertmanager, &am_client) {
                let sent = AmBatch {
                    am,
                    client,
                    base_url: &base_url,
                    hold,
                    metrics: &metrics,
                    stop: &stop,
                };
                if !sent.send(&incidents, &mut am_labels).await {
                    // Resolutions are resent next time.
                    resolved_done.clear();
                }
            }
            for (i, (hook, tx, _)) in hooks.iter().enumerate() {
                for inc in incidents.iter().filter(|inc| {
                    inc.state != "silenced"
                        && routed(&hook.environments, hook.min_severity.rank(), inc)
                }) {
                    let state = (inc.state, inc.severity);
                    if notified.get(&(i, inc.id)) == Some(&state) {
                        continue;
                    }
                    let n = Notification {
                        body: webhook_body(hook.format, inc, &base_url),
                        incident: inc.id,
                    };
                    match tx.try_send(n) {
                        Ok(()) => {
                            notified.insert((i, inc.id), state);
                        }
                        Err(_) => {
                            metrics.delivery("webhook_queue_full");
                            tracing::warn!(incident = inc.id, url = %hook.url, "webhook queue full; notification dropped");
                        }
                    }
                }
            }
            // Forget what is settled, so the map stays bounded.
            if !resolved_done.is_empty() {
                notified.retain(|(_, id), _| !resolved_done.contains(id));
                let st = store.clone();
                let ids = resolved_done.clone();
                if let Ok(Err(e)) =
                    tokio::task::spawn_blocking(move || st.mark_resolved_sent(&ids)).await
                {
                    tracing::error!(error = %e, "recording delivered resolutions failed");
                }
            }
        }
        for (_, tx, worker) in hooks {
            drop(tx);
            let _ = worker.await;
        }
    }))
}

struct AmBatch<'a> {
    am: &'a AlertmanagerSettings,
    client: &'a reqwest::Client,
    base_url: &'a str,
    hold: Duration,
    metrics: &'a AggMetrics,
    stop: &'a CancellationToken,
}

impl AmBatch<'_> {
    /// Posts the routed incidents' alerts; returns whether Alertmanager took them.
    async fn send(
        &self,
        incidents: &[Incident],
        last_labels: &mut HashMap<i64, serde_json::Value>,
    ) -> bool {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        let routed: Vec<&Incident> = incidents
            .iter()
            .filter(|i| routed(&self.am.environments, self.am.min_severity.rank(), i))
            .collect();
        let mut alerts = Vec::with_capacity(routed.len());
        let mut labels_now = Vec::with_capacity(routed.len());
        for inc in &routed {
            if inc.state == "silenced" {
                // Silenced after it was sent: end the alert now rather than let it linger.
                if let Some(old) = last_labels.remove(&inc.id) {
                    let mut ended = alertmanager_alert(inc, self.base_url, now_ms, self.hold);
                    ended["labels"] = old;
                    ended["endsAt"] = json!(rfc3339_ms(now_ms));
                    alerts.push(ended);
                }
                continue;
            }
            let alert = alertmanager_alert(inc, self.base_url, now_ms, self.hold);
            if let Some(old) = last_labels.get(&inc.id) {
                if *old != alert["labels"] {
                    let mut ended = alert.clone();
                    ended["labels"] = old.clone();
                    ended["endsAt"] = json!(rfc3339_ms(now_ms));
                    alerts.push(ended);
                }
            }
            labels_now.push((inc.id, inc.state == "open", alert["labels"].clone()));
            alerts.push(alert);
        }
        if alerts.is_empty() {
            return true;
        }
        let url = format!("{}/api/v2/alerts", self.am.url.trim_end_matches('/'));
        match post_with_retries(
            self.client,
            &url,
            &serde_json::Value::Array(alerts),
            3,
            self.stop,
        )
        .await
        {
            Ok(()) => {
                self.metrics.delivery("alertmanager_ok");
                for (id, open, labels) in labels_now {
                    if open {
                        last_labels.insert(id, labels);
                    } else {
                        last_labels.remove(&id);
                    }
                }
                true
            }
            Err(e) => {
                self.metrics.delivery("alertmanager_failed");
                tracing::warn!(error = %e, url = %url, "alertmanager delivery failed; will resend");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inc(state: &'static str) -> Incident {
        Incident {
            id: 7,
            environment: "prod".into(),
            state,
            persistent: false,
            start_ms: 1_700_000_000_000,
            end_ms: 1_700_000_060_000,
            resolved_ms: (state == "resolved").then_some(1_700_000_400_000),
            max_score: 91.0,
            sum_score: 150.0,
            severity: "critical",
            event_count: 2,
            muted_events: 0,
            services: vec!["cart".into(), "payment".into()],
            top_event_id: "e".into(),
            service: "payment".into(),
            signal: "traces".into(),
            key: "payment / Charge".into(),
            explanation: "p99 775 ms vs 185 ms".into(),
        }
    }

    #[test]
    fn alertmanager_labels_and_resolution() {
        let a = alertmanager_alert(
            &inc("open"),
            "http://agg:8080/",
            1_700_000_100_000,
            Duration::from_secs(120),
        );
        assert_eq!(a["labels"]["environment"], "prod");
        assert_eq!(a["labels"]["service"], "payment");
        assert_eq!(a["labels"]["signal"], "traces");
        assert_eq!(a["labels"]["severity"], "critical");
        assert_eq!(a["labels"]["incident_id"], "7");
        assert_eq!(a["endsAt"], "2023-11-14T22:17:00.000Z");
        assert_eq!(
            a["annotations"]["dashboard"],
            "http://agg:8080/#/incidents/7"
        );
        let r = alertmanager_alert(
            &inc("resolved"),
            "http://agg:8080",
            1_700_000_900_000,
            Duration::from_secs(120),
        );
        assert_eq!(r["endsAt"], "2023-11-14T22:20:00.000Z");
    }

    #[test]
    fn routing_and_webhook_formats() {
        let i = inc("open");
        assert!(routed(&[], 3, &i));
        assert!(!routed(&["dev".into()], 1, &i));
        assert!(!routed(&[], 4, &i));
        let slack = webhook_body(WebhookFormat::Slack, &i, "http://x");
        assert!(slack["text"]
            .as_str()
            .unwrap()
            .starts_with("[FIRING] critical prod incident #7"));
        let j = webhook_body(WebhookFormat::Json, &inc("resolved"), "http://x");
        assert_eq!(j["status"], "resolved");
        assert_eq!(j["incident"]["id"], 7);
    }
}
