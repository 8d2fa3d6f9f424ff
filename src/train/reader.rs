//! Reads one signal's documents of one environment from Elasticsearch, in
//! time order, page by page: a point in time with `search_after` where the
//! server has the point-in-time API (Elasticsearch 7.10+), else a scroll
//! (servers without it, such as OpenSearch-compatible ones).
//!
//! A page that is incomplete (failed shards, a timed-out search) is never
//! used: it is asked again (point in time) or reading stops with an error
//! (a scroll cannot ask for the same page twice).

use std::time::Duration;

use elasticsearch::auth::Credentials;
use elasticsearch::cert::{Certificate, CertificateValidation};
use elasticsearch::http::transport::{
    CloudConnectionPool, MultiNodeConnectionPool, SingleNodeConnectionPool, TransportBuilder,
};
use elasticsearch::indices::IndicesGetMappingParts;
use elasticsearch::{
    ClearScrollParts, Elasticsearch, OpenPointInTimeParts, ScrollParts, SearchParts,
};
use serde::de::DeserializeOwned;
use serde_json::json;

use super::doc::{LogSrc, PointSrc, SpanSrc};
use super::{Rec, TrainError};
use crate::config::{EsCredentials, EsTarget};
use crate::telemetry::Signal;

/// A connection to one Elasticsearch target, with what errors should name.
#[derive(Clone)]
pub struct Target {
    client: Elasticsearch,
    /// The URLs or cloud id, for messages.
    pub describe: String,
    /// Which option holds the credentials, for messages.
    pub key_hint: String,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("describe", &self.describe)
            .finish()
    }
}

impl Target {
    /// A client for `target` (no network I/O yet).
    pub fn new(target: &EsTarget, key_hint: &str, timeout: Duration) -> Result<Self, TrainError> {
        let es = &target.settings;
        let describe;
        let mut builder = if let Some(cloud_id) = &es.cloud_id {
            describe = format!("cloud id {cloud_id}");
            let pool = CloudConnectionPool::new(cloud_id)
                .map_err(|e| TrainError::Config(format!("invalid cloud_id: {e}")))?;
            TransportBuilder::new(pool)
        } else {
            describe = es.urls.join(",");
            let mut urls = Vec::new();
            for u in &es.urls {
                urls.push(url::Url::parse(u).map_err(|e| {
                    TrainError::Config(format!("invalid Elasticsearch URL {u:?}: {e}"))
                })?);
            }
            match urls.len() {
                0 => return Err(TrainError::Config("no Elasticsearch URL given".into())),
                1 => TransportBuilder::new(SingleNodeConnectionPool::new(urls.remove(0))),
                _ => TransportBuilder::new(MultiNodeConnectionPool::round_robin(urls, None)),
            }
        };
        match &target.credentials {
            Some(EsCredentials::ApiKey(k)) => {
                builder = builder.auth(Credentials::EncodedApiKey(k.expose().to_string()))
            }
            Some(EsCredentials::Basic { username, password }) => {
                builder = builder.auth(Credentials::Basic(
                    username.clone(),
                    password.expose().to_string(),
                ))
            }
            None => {}
        }
        if let Some(ca) = &es.ca_file {
            let pem = std::fs::read(ca)
                .map_err(|e| TrainError::Config(format!("cannot read {}: {e}", ca.display())))?;
            let cert = Certificate::from_pem(&pem).map_err(|e| {
                TrainError::Config(format!("invalid CA certificate {}: {e}", ca.display()))
            })?;
            builder = builder.cert_validation(CertificateValidation::Full(cert));
        }
        let transport = builder
            .timeout(timeout)
            .build()
            .map_err(|e| TrainError::Config(format!("cannot build the client: {e}")))?;
        Ok(Self {
            client: Elasticsearch::new(transport),
            describe,
            key_hint: key_hint.to_string(),
        })
    }
}

/// How the pages are fetched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Paging {
    /// Point in time + `search_after`.
    PointInTime,
    /// Scroll (the server has no point-in-time API).
    Scroll,
}

#[derive(Debug, serde::Deserialize)]
struct Shards {
    #[serde(default)]
    failed: u64,
    #[serde(default)]
    failures: Vec<serde_json::Value>,
}

#[derive(Debug, serde::Deserialize)]
struct Total {
    value: u64,
}

#[derive(Debug, serde::Deserialize)]
struct Hit {
    #[serde(rename = "_id", default)]
    id: String,
    #[serde(rename = "_index", default)]
    index: String,
    #[serde(rename = "_source")]
    source: Option<Box<serde_json::value::RawValue>>,
    #[serde(default)]
    sort: Option<Vec<serde_json::Value>>,
}

#[derive(Debug, serde::Deserialize)]
struct Hits {
    #[serde(default)]
    total: Option<Total>,
    hits: Vec<Hit>,
}

#[derive(Debug, serde::Deserialize)]
struct SearchResponse {
    #[serde(rename = "_scroll_id", default)]
    scroll_id: Option<String>,
    #[serde(default)]
    pit_id: Option<String>,
    #[serde(default)]
    timed_out: bool,
    #[serde(rename = "_shards")]
    shards: Option<Shards>,
    hits: Hits,
}

/// The error object of an Elasticsearch reply.
fn error_type_and_reason(body: &[u8]) -> (String, String) {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let e = &v["error"];
    let ty = e["type"].as_str().unwrap_or("").to_string();
    let reason = e["reason"]
        .as_str()
        .map(str::to_string)
        .or_else(|| e.as_str().map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned());
    (ty, reason)
}

/// Documents of one signal, read page by page in time order.
#[derive(Debug)]
pub struct SignalReader {
    target: Target,
    signal: Signal,
    index: String,
    from_ns: u64,
    to_ns: u64,
    page_size: usize,
    keep_alive: String,
    max_retries: u32,
    paging: Paging,
    /// Point-in-time id or scroll id.
    cursor: Option<String>,
    search_after: Option<Vec<serde_json::Value>>,
    /// Documents in range, known after the first page.
    pub total: u64,
    first: bool,
    done: bool,
    /// Pages read so far.
    pub pages: u64,
    /// Parse failures are errors unless this is set (then they are counted).
    skip_bad: bool,
    /// Documents skipped as unreadable.
    pub skipped: u64,
}

fn status_error(target: &Target, what: &str, index: &str, status: u16, body: &[u8]) -> TrainError {
    let (ty, reason) = error_type_and_reason(body);
    match status {
        401 => TrainError::Unauthorized {
            target: target.describe.clone(),
            key_hint: target.key_hint.clone(),
            reason,
        },
        403 => TrainError::Forbidden {
            target: target.describe.clone(),
            index: index.to_string(),
            reason,
        },
        _ => TrainError::Request {
            what: what.to_string(),
            index: index.to_string(),
            status,
            reason: if ty.is_empty() {
                reason
            } else {
                format!("{ty}: {reason}")
            },
        },
    }
}

impl SignalReader {
    /// Prepares reading `index` over [from_ns, to_ns): checks the mapping,
    /// opens a point in time (or notes that a scroll is needed). `None` when
    /// the index does not exist.
    pub async fn open(
        target: &Target,
        signal: Signal,
        index: &str,
        range: (u64, u64),
        settings: &super::settings::TrainSettings,
        skip_bad: bool,
    ) -> Result<Option<Self>, TrainError> {
        if !check_mapping(target, signal, index).await? {
            return Ok(None);
        }
        let keep_alive = format!("{}s", settings.keep_alive.as_secs().max(1));
        let resp = target
            .client
            .open_point_in_time(OpenPointInTimeParts::Index(&[index]))
            .keep_alive(&keep_alive)
            .send()
            .await
            .map_err(|e| unreachable(target, e))?;
        let status = resp.status_code().as_u16();
        let body = resp.bytes().await.map_err(|e| unreachable(target, e))?;
        let (paging, cursor) = match status {
            200 => {
                let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                match v["id"].as_str() {
                    Some(id) => (Paging::PointInTime, Some(id.to_string())),
                    None => (Paging::Scroll, None),
                }
            }
            401 | 403 => {
                return Err(status_error(
                    target,
                    "open a point in time",
                    index,
                    status,
                    &body,
                ))
            }
            404 if error_type_and_reason(&body).0 == "index_not_found_exception" => {
                return Ok(None)
            }
            // No point-in-time API on this server (404/405 "no handler", 400).
            400 | 404 | 405 => {
                tracing::info!(
                    index,
                    status,
                    "the server has no point-in-time API; reading with scroll"
                );
                (Paging::Scroll, None)
            }
            _ => {
                return Err(status_error(
                    target,
                    "open a point in time",
                    index,
                    status,
                    &body,
                ))
            }
        };
        Ok(Some(Self {
            target: target.clone(),
            signal,
            index: index.to_string(),
            from_ns: range.0,
            to_ns: range.1,
            page_size: settings.page_size,
            keep_alive,
            max_retries: settings.max_retries,
            paging,
            cursor,
            search_after: None,
            total: 0,
            first: true,
            done: false,
            pages: 0,
            skip_bad,
            skipped: 0,
        }))
    }

    /// How pages are fetched.
    pub fn paging(&self) -> Paging {
        self.paging
    }

    fn body(&self) -> serde_json::Value {
        // No `_source` filtering: some servers rebuild filtered sources with
        // dotted keys ("service.name") split into objects, which would change
        // the re-encoded resource and so the series keys.
        let mut body = json!({
            "size": self.page_size,
            "sort": [{"@timestamp": {"order": "asc", "numeric_type": "date_nanos"}}],
            "query": {"range": {"@timestamp": {
                "gte": self.from_ns / 1_000_000,
                "lt": self.to_ns.div_ceil(1_000_000),
                "format": "epoch_millis",
            }}},
        });
        if self.first {
            body["track_total_hits"] = json!(true);
        }
        if self.paging == Paging::PointInTime {
            body["pit"] = json!({"id": self.cursor, "keep_alive": self.keep_alive});
            if let Some(after) = &self.search_after {
                body["search_after"] = json!(after);
            }
        }
        body
    }

    async fn request(&self) -> Result<(u16, bytes::Bytes), elasticsearch::Error> {
        let resp = match (self.paging, self.first) {
            (Paging::PointInTime, _) => {
                self.target
                    .client
                    .search(SearchParts::None)
                    .body(self.body())
                    .send()
                    .await?
            }
            (Paging::Scroll, true) => {
                self.target
                    .client
                    .search(SearchParts::Index(&[&self.index]))
                    .scroll(&self.keep_alive)
                    .body(self.body())
                    .send()
                    .await?
            }
            (Paging::Scroll, false) => {
                self.target
                    .client
                    .scroll(ScrollParts::None)
                    .body(json!({"scroll": self.keep_alive, "scroll_id": self.cursor}))
                    .send()
                    .await?
            }
        };
        let status = resp.status_code().as_u16();
        Ok((status, resp.bytes().await?))
    }

    /// The next page of records (empty once everything was read).
    pub async fn next_page(&mut self) -> Result<Vec<Rec>, TrainError> {
        if self.done {
            return Ok(Vec::new());
        }
        let mut attempt = 0;
        let resp: SearchResponse = loop {
            attempt += 1;
            let retryable = |why: String| -> Result<(), TrainError> {
                // A scroll cannot ask for the same page again: stop rather than skip it.
                if self.paging == Paging::Scroll && !self.first {
                    return Err(TrainError::PartialPage {
                        index: self.index.clone(),
                        page: self.pages + 1,
                        why,
                    });
                }
                if attempt > self.max_retries {
                    return Err(TrainError::PartialPage {
                        index: self.index.clone(),
                        page: self.pages + 1,
                        why: format!("{why} (after {attempt} attempts)"),
                    });
                }
                tracing::warn!(index = %self.index, page = self.pages + 1, attempt, "{why}; asking again");
                Ok(())
            };
            let (status, body) = match self.request().await {
                Ok(r) => r,
                Err(e) if e.is_timeout() => {
                    retryable(format!("search timed out: {e}"))?;
                    tokio::time::sleep(backoff(attempt)).await;
                    continue;
                }
                Err(e) => return Err(unreachable(&self.target, e)),
            };
            match status {
                200 => {}
                429 | 500..=599 => {
                    let (ty, reason) = error_type_and_reason(&body);
                    retryable(format!("status {status} {ty}: {reason}"))?;
                    tokio::time::sleep(backoff(attempt)).await;
                    continue;
                }
                404 if self.paging == Paging::PointInTime && !self.first => {
                    return Err(TrainError::PointInTimeExpired {
                        index: self.index.clone(),
                        reason: error_type_and_reason(&body).1,
                    })
                }
                _ => {
                    return Err(status_error(
                        &self.target,
                        "search",
                        &self.index,
                        status,
                        &body,
                    ))
                }
            }
            let resp: SearchResponse =
                serde_json::from_slice(&body).map_err(|e| TrainError::Request {
                    what: "read a search reply".into(),
                    index: self.index.clone(),
                    status,
                    reason: format!("unexpected reply: {e}"),
                })?;
            let failed = resp.shards.as_ref().map(|s| s.failed).unwrap_or(0);
            if failed > 0 || resp.timed_out {
                let detail = resp
                    .shards
                    .as_ref()
                    .and_then(|s| s.failures.first())
                    .map(|f| f.to_string())
                    .unwrap_or_default();
                retryable(format!(
                    "incomplete page: {failed} shard(s) failed, timed_out={} {detail}",
                    resp.timed_out
                ))?;
                tokio::time::sleep(backoff(attempt)).await;
                continue;
            }
            break resp;
        };
        if self.first {
            self.total = resp.hits.total.as_ref().map(|t| t.value).unwrap_or(0);
        }
        self.first = false;
        self.pages += 1;
        match self.paging {
            Paging::PointInTime => {
                if let Some(id) = resp.pit_id {
                    self.cursor = Some(id);
                }
            }
            Paging::Scroll => self.cursor = resp.scroll_id.or(self.cursor.take()),
        }
        if resp.hits.hits.is_empty() {
            self.done = true;
            return Ok(Vec::new());
        }
        if self.paging == Paging::PointInTime {
            let last = resp.hits.hits.last().and_then(|h| h.sort.clone());
            match last {
                Some(s) => self.search_after = Some(s),
                None => {
                    return Err(TrainError::Request {
                        what: "page with search_after".into(),
                        index: self.index.clone(),
                        status: 200,
                        reason: "hits carry no sort values".into(),
                    })
                }
            }
        }
        let mut out = Vec::with_capacity(resp.hits.hits.len());
        for hit in resp.hits.hits {
            match parse_hit(self.signal, &hit) {
                Ok(r) => out.push(r),
                Err(why) if self.skip_bad => {
                    self.skipped += 1;
                    tracing::debug!(index = %hit.index, id = %hit.id, "skipped document: {why}");
                }
                Err(why) => {
                    return Err(TrainError::BadDocument {
                        index: if hit.index.is_empty() {
                            self.index.clone()
                        } else {
                            hit.index
                        },
                        id: hit.id,
                        why,
                    })
                }
            }
        }
        // Sort values are milliseconds on some servers: order within a page by the exact time.
        out.sort_by_key(Rec::time_ns);
        Ok(out)
    }

    /// Releases the point in time or scroll (best effort).
    pub async fn close(self) {
        let Some(id) = self.cursor else { return };
        let result = match self.paging {
            Paging::PointInTime => self
                .target
                .client
                .close_point_in_time()
                .body(json!({"id": id}))
                .send()
                .await
                .map(|_| ()),
            Paging::Scroll => self
                .target
                .client
                .clear_scroll(ClearScrollParts::None)
                .body(json!({"scroll_id": [id]}))
                .send()
                .await
                .map(|_| ()),
        };
        if let Err(e) = result {
            tracing::debug!(index = %self.index, error = %e, "releasing the search context failed");
        }
    }
}

fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(200u64 << attempt.min(5))
}

fn unreachable(target: &Target, e: elasticsearch::Error) -> TrainError {
    TrainError::Unreachable {
        target: target.describe.clone(),
        reason: e.to_string(),
    }
}

fn parse_src<T: DeserializeOwned>(raw: &serde_json::value::RawValue) -> Result<T, String> {
    serde_json::from_str(raw.get()).map_err(|e| e.to_string())
}

fn parse_hit(signal: Signal, hit: &Hit) -> Result<Rec, String> {
    let raw = hit.source.as_ref().ok_or("no _source")?;
    let rec = match signal {
        Signal::traces => Rec::Span(
            parse_src::<SpanSrc>(raw)?
                .into_rec()
                .map_err(|e| e.to_string())?,
        ),
        Signal::metrics => Rec::Point(
            parse_src::<PointSrc>(raw)?
                .into_rec()
                .map_err(|e| e.to_string())?,
        ),
        Signal::logs => Rec::Log(
            parse_src::<LogSrc>(raw)?
                .into_rec()
                .map_err(|e| e.to_string())?,
        ),
    };
    Ok(rec)
}

/// Field types each signal's documents must have, by dotted path.
fn required_types(signal: Signal) -> &'static [(&'static str, &'static [&'static str])] {
    const TIME: &[&str] = &["date", "date_nanos"];
    const INT: &[&str] = &["long", "integer", "short", "byte", "unsigned_long"];
    match signal {
        Signal::traces => &[("@timestamp", TIME), ("duration", INT)],
        Signal::metrics => &[("@timestamp", TIME)],
        Signal::logs => &[("@timestamp", TIME), ("severity_number", INT)],
    }
}

fn field_type<'a>(props: &'a serde_json::Value, path: &str) -> Option<&'a str> {
    let mut cur = props;
    let mut parts = path.split('.').peekable();
    while let Some(p) = parts.next() {
        let f = &cur[p];
        if parts.peek().is_none() {
            return f["type"].as_str();
        }
        cur = &f["properties"];
    }
    None
}

/// Checks that every index behind `index` maps the fields reading relies
/// on with usable types, and with the same type (a data stream whose
/// backing indices disagree is "mixed"). `false` when `index` does not exist.
async fn check_mapping(target: &Target, signal: Signal, index: &str) -> Result<bool, TrainError> {
    let resp = target
        .client
        .indices()
        .get_mapping(IndicesGetMappingParts::Index(&[index]))
        .send()
        .await
        .map_err(|e| unreachable(target, e))?;
    let status = resp.status_code().as_u16();
    let body = resp.bytes().await.map_err(|e| unreachable(target, e))?;
    match status {
        200 => {}
        404 => return Ok(false),
        _ => {
            return Err(status_error(
                target,
                "read the mapping",
                index,
                status,
                &body,
            ))
        }
    }
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let Some(indices) = v.as_object() else {
        return Ok(false);
    };
    if indices.is_empty() {
        return Ok(false);
    }
    for (field, allowed) in required_types(signal) {
        let mut good: Option<(String, String)> = None;
        let mut bad: Option<(String, String)> = None;
        for (name, m) in indices {
            // An index without the field (no document has it yet) is fine.
            let Some(ty) = field_type(&m["mappings"]["properties"], field) else {
                continue;
            };
            let slot = if allowed.contains(&ty) {
                &mut good
            } else {
                &mut bad
            };
            slot.get_or_insert_with(|| (name.clone(), ty.to_string()));
        }
        match (good, bad) {
            (Some((g, gt)), Some((b, bt))) => {
                return Err(TrainError::MixedMappings {
                    field: field.to_string(),
                    good: format!("{g} ({gt})"),
                    bad: format!("{b} ({bt})"),
                    expected: allowed.join(" or "),
                })
            }
            (None, Some((b, bt))) => {
                return Err(TrainError::Mapping {
                    index: b,
                    field: field.to_string(),
                    found: bt,
                    expected: allowed.join(" or "),
                })
            }
            _ => {}
        }
    }
    Ok(true)
}
