//! Elasticsearch faults against the real sidecar: an in-process fake
//! Elasticsearch (axum on 127.0.0.1) answers bulk items with injected 429s,
//! 500s and mapping errors, or is not there at all at start. Every document
//! must end up stored exactly once or in the dead-letter file, never both,
//! and nothing that succeeded may be sent again.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{post, put};
use axum::Router;
use common::*;
use otel_anomaly::config::{Compression, Config, ElasticsearchSettings, IndexMode};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Injected per-item failures, by document `_id`.
#[derive(Debug, Clone, Default)]
struct Faults {
    /// 429 on the first N attempts.
    too_many: HashMap<String, u32>,
    /// 500 on the first attempt.
    fail_once: HashSet<String>,
    /// 400 mapper_parsing_exception, always.
    reject: HashSet<String>,
}

#[derive(Debug, Default)]
struct FakeState {
    faults: Faults,
    /// _id → (index, source).
    store: HashMap<String, (String, serde_json::Value)>,
    /// _id → times answered 201.
    created: HashMap<String, u32>,
    /// _id → times seen in a bulk request.
    attempts: HashMap<String, u32>,
    /// Item ids of each bulk request, in arrival order.
    bulk_requests: Vec<Vec<String>>,
    /// Content-Encoding of each bulk request.
    encodings: Vec<Option<String>>,
    /// Index templates installed.
    templates: Vec<String>,
    /// Requests of any kind received.
    requests: usize,
    /// Requests to anything but the two endpoints, or unreadable bodies.
    unexpected: Vec<String>,
}

type Shared = Arc<Mutex<FakeState>>;

fn es_json(status: StatusCode, body: String) -> Response {
    (
        status,
        [
            ("content-type", "application/json"),
            ("x-elastic-product", "Elasticsearch"),
        ],
        body,
    )
        .into_response()
}

async fn put_template(
    State(st): State<Shared>,
    UrlPath(name): UrlPath<String>,
    body: Bytes,
) -> Response {
    let mut s = st.lock().unwrap();
    s.requests += 1;
    if serde_json::from_slice::<serde_json::Value>(&body).is_err() {
        s.unexpected
            .push(format!("template {name}: body is not JSON"));
    }
    s.templates.push(name);
    es_json(StatusCode::OK, r#"{"acknowledged":true}"#.into())
}

fn item(id: &str, index: &str, status: u16, error: Option<(&str, &str)>) -> serde_json::Value {
    let mut it = serde_json::json!({"_index": index, "_id": id, "status": status});
    if let Some((ty, reason)) = error {
        it["error"] = serde_json::json!({"type": ty, "reason": reason});
    }
    serde_json::json!({ "create": it })
}

async fn bulk(State(st): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let mut s = st.lock().unwrap();
    s.requests += 1;
    let encoding = headers
        .get("content-encoding")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    s.encodings.push(encoding.clone());
    let raw = match encoding.as_deref() {
        Some("gzip") => match gunzip(&body) {
            Ok(b) => b,
            Err(e) => {
                s.unexpected.push(format!("bulk body is not gzip: {e}"));
                return es_json(StatusCode::BAD_REQUEST, r#"{"error":"bad gzip"}"#.into());
            }
        },
        None => body.to_vec(),
        Some(other) => {
            s.unexpected.push(format!("bulk content-encoding {other}"));
            return es_json(
                StatusCode::BAD_REQUEST,
                r#"{"error":"bad encoding"}"#.into(),
            );
        }
    };
    let text = String::from_utf8(raw).expect("bulk body is UTF-8");
    let lines: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
    if !lines.len().is_multiple_of(2) {
        s.unexpected.push(format!(
            "bulk body has an odd number of lines ({})",
            lines.len()
        ));
        return es_json(StatusCode::BAD_REQUEST, r#"{"error":"odd lines"}"#.into());
    }
    let mut ids = Vec::new();
    let mut items = Vec::new();
    let mut errors = false;
    for pair in lines.chunks(2) {
        let action: serde_json::Value = serde_json::from_str(pair[0]).expect("action line is JSON");
        let source: serde_json::Value = serde_json::from_str(pair[1]).expect("source line is JSON");
        let meta = action.get("create").expect("the action is create");
        let id = meta["_id"].as_str().expect("_id").to_string();
        let index = meta["_index"].as_str().expect("_index").to_string();
        ids.push(id.clone());
        let n = {
            let a = s.attempts.entry(id.clone()).or_default();
            *a += 1;
            *a
        };
        let answer = if s.faults.reject.contains(&id) {
            item(
                &id,
                &index,
                400,
                Some((
                    "mapper_parsing_exception",
                    "failed to parse field [duration]",
                )),
            )
        } else if s.faults.too_many.get(&id).is_some_and(|k| n <= *k) {
            item(
                &id,
                &index,
                429,
                Some(("es_rejected_execution_exception", "rejected execution")),
            )
        } else if s.faults.fail_once.contains(&id) && n == 1 {
            item(
                &id,
                &index,
                500,
                Some(("illegal_state_exception", "shard failure")),
            )
        } else if s.store.contains_key(&id) {
            item(
                &id,
                &index,
                409,
                Some((
                    "version_conflict_engine_exception",
                    "document already exists",
                )),
            )
        } else {
            s.store.insert(id.clone(), (index.clone(), source));
            *s.created.entry(id.clone()).or_default() += 1;
            item(&id, &index, 201, None)
        };
        errors |= answer["create"]["status"] != 201;
        items.push(answer);
    }
    s.bulk_requests.push(ids);
    es_json(
        StatusCode::OK,
        serde_json::json!({"took": 1, "errors": errors, "items": items}).to_string(),
    )
}

/// `GET /`: the cluster banner (the sidecar's reachability check when templates are off).
async fn root(State(st): State<Shared>) -> Response {
    st.lock().unwrap().requests += 1;
    es_json(
        StatusCode::OK,
        r#"{"name":"fake","cluster_name":"fake","version":{"number":"8.15.0"},"tagline":"You Know, for Search"}"#.into(),
    )
}

async fn other(State(st): State<Shared>, uri: Uri) -> Response {
    let mut s = st.lock().unwrap();
    s.requests += 1;
    s.unexpected.push(format!("unexpected request {uri}"));
    es_json(StatusCode::NOT_FOUND, r#"{"error":"not found"}"#.into())
}

/// A fake Elasticsearch on a bound listener.
struct FakeEs {
    addr: SocketAddr,
    state: Shared,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl FakeEs {
    async fn serve(listener: tokio::net::TcpListener, faults: Faults) -> Self {
        let addr = listener.local_addr().unwrap();
        let state: Shared = Arc::new(Mutex::new(FakeState {
            faults,
            ..Default::default()
        }));
        let app = Router::new()
            .route("/_index_template/{name}", put(put_template))
            .route("/_bulk", post(bulk))
            .route("/", axum::routing::get(root))
            .fallback(other)
            .with_state(state.clone());
        let stop = CancellationToken::new();
        let token = stop.clone();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(token.cancelled_owned())
                .await
                .expect("fake elasticsearch serves");
        });
        Self {
            addr,
            state,
            stop,
            task,
        }
    }

    async fn start(faults: Faults) -> Self {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(l, faults).await
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn with<T>(&self, f: impl FnOnce(&FakeState) -> T) -> T {
        f(&self.state.lock().unwrap())
    }

    async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("fake elasticsearch stops")
            .expect("fake task");
    }
}

fn es_config(dir: &Path, url: String, compression: Compression, setup: bool) -> Config {
    let mut cfg = base_config(dir);
    let mut es = ElasticsearchSettings {
        urls: vec![url],
        mode: IndexMode::Index,
        setup,
        ..Default::default()
    };
    es.bulk.flush_interval = Duration::from_millis(50);
    es.bulk.initial_backoff = Duration::from_millis(20);
    es.bulk.max_backoff = Duration::from_millis(200);
    es.bulk.timeout = Duration::from_secs(5);
    es.bulk.compression = compression;
    cfg.settings.export.elasticsearch = Some(es);
    cfg
}

fn dead_letters(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("dead-letter.ndjson"))
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("dead-letter line is JSON"))
        .collect()
}

/// Sends spans 1..=n over HTTP and gRPC, in requests of 10.
async fn send_spans(sc: &Sidecar, n: u32) {
    let mut grpc = sc.grpc().await;
    for (k, chunk) in (1..=n).collect::<Vec<_>>().chunks(10).enumerate() {
        let req = trace_request(chunk.iter().map(|i| span(*i, "GET /cart")).collect());
        if k % 2 == 0 {
            let resp = sc.post_traces(&req).await;
            assert_eq!(resp.status().as_u16(), 200);
        } else {
            let reply = tokio::time::timeout(WAIT, grpc.export(req))
                .await
                .expect("grpc timed out")
                .expect("grpc export");
            assert_eq!(reply.into_inner().partial_success, None);
        }
    }
}

async fn metric(sc: &Sidecar, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric_value(&sc.metrics_text().await, name, labels).unwrap_or(0.0)
}

async fn retries_and_dead_letters(compression: Compression) {
    const N: u32 = 40;
    const TOO_MANY_ATTEMPTS: u32 = 2;
    let too_many = [3u32, 4, 5, 31];
    let fail_once = [7u32, 8, 22];
    let reject = [10u32, 11, 25];

    let faults = Faults {
        too_many: too_many
            .iter()
            .map(|i| (doc_id(*i), TOO_MANY_ATTEMPTS))
            .collect(),
        fail_once: fail_once.iter().map(|i| doc_id(*i)).collect(),
        reject: reject.iter().map(|i| doc_id(*i)).collect(),
    };
    let fake = FakeEs::start(faults).await;
    let dir = tempfile::tempdir().unwrap();
    let sc = Sidecar::start(es_config(dir.path(), fake.url(), compression, true)).await;

    send_spans(&sc, N).await;

    let rejected: BTreeSet<String> = reject.iter().map(|i| doc_id(*i)).collect();
    let stored_want: BTreeSet<String> = (1..=N)
        .map(doc_id)
        .filter(|id| !rejected.contains(id))
        .collect();
    let n_rejected = rejected.len() as f64;
    let (want_stored, want_dl) = (stored_want.len(), rejected.len());
    let scr = &sc;
    eventually("every document stored or dead-lettered", WAIT, || {
        let stored = fake.with(|s| s.store.len());
        let dl = dead_letters(dir.path()).len();
        async move {
            stored >= want_stored
                && dl >= want_dl
                && metric(scr, "otel_anomaly_dead_lettered_documents_total", &[]).await
                    >= n_rejected
        }
    })
    .await;

    assert_eq!(sc.admin_status("/readyz").await, 200);
    let text = sc.metrics_text().await;

    fake.with(|s| {
        assert!(s.unexpected.is_empty(), "{:?}", s.unexpected);
        assert_eq!(
            s.templates.len(),
            3,
            "one index template per signal: {:?}",
            s.templates
        );
        let want_encoding = match compression {
            Compression::Gzip => Some("gzip".to_string()),
            Compression::None => None,
        };
        assert!(
            s.encodings.iter().all(|e| *e == want_encoding),
            "{:?}",
            s.encodings
        );

        // (a) every deliverable document stored exactly once, in the right index.
        let stored: BTreeSet<String> = s.store.keys().cloned().collect();
        assert_eq!(stored, stored_want);
        assert!(s.created.values().all(|n| *n == 1), "{:?}", s.created);
        for (id, (index, source)) in &s.store {
            assert_eq!(index, &format!("traces-otel-{ENV}"));
            assert_eq!(
                format!(
                    "{}{}",
                    source["trace_id"].as_str().unwrap(),
                    source["span_id"].as_str().unwrap()
                ),
                *id
            );
            assert!(source["anomaly"].is_object(), "{source}");
        }

        // (b) resent exactly as often as failed; never resent after success or a permanent rejection.
        let mut sent: BTreeMap<String, u32> = BTreeMap::new();
        for ids in &s.bulk_requests {
            for id in ids {
                *sent.entry(id.clone()).or_default() += 1;
            }
        }
        for i in 1..=N {
            let id = doc_id(i);
            let want = if too_many.contains(&i) {
                TOO_MANY_ATTEMPTS + 1
            } else if fail_once.contains(&i) {
                2
            } else {
                1
            };
            assert_eq!(
                sent.get(&id).copied(),
                Some(want),
                "span {i} ({id}) sent {:?} times",
                sent.get(&id)
            );
        }
        assert!(
            s.bulk_requests.len() > 1,
            "failed items are resent in later bulk requests"
        );
    });

    // (c) the permanently rejected documents are in the dead-letter file, with the reason, and nowhere else.
    let dl = dead_letters(dir.path());
    let dl_ids: BTreeSet<String> = dl
        .iter()
        .map(|d| d["_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(dl.len(), rejected.len(), "{dl:?}");
    assert_eq!(dl_ids, rejected);
    for d in &dl {
        assert!(
            d["reason"]
                .as_str()
                .unwrap()
                .contains("mapper_parsing_exception"),
            "{d}"
        );
        assert_eq!(d["signal"], "traces");
        assert!(
            d["document"]["trace_id"].is_string(),
            "the document itself is kept: {d}"
        );
    }

    // (d) metrics.
    let retries_want = (too_many.len() as u32 * TOO_MANY_ATTEMPTS + fail_once.len() as u32) as f64;
    let retries = metric_value(&text, "otel_anomaly_export_retries_total", &[]).unwrap_or(0.0);
    assert!(retries > 0.0);
    assert_eq!(retries, retries_want, "{text}");
    assert_eq!(
        metric_value(&text, "otel_anomaly_dead_lettered_documents_total", &[]),
        Some(n_rejected)
    );
    assert_eq!(
        metric_value(
            &text,
            "otel_anomaly_exported_documents_total",
            &[("outcome", "created")]
        ),
        Some(stored_want.len() as f64),
        "{text}"
    );
    assert_eq!(
        metric_value(&text, "otel_anomaly_queued_records", &[]),
        Some(0.0),
        "{text}"
    );

    let requests_before = fake.with(|s| s.bulk_requests.len());
    sc.shutdown().await;
    assert_eq!(
        fake.with(|s| s.bulk_requests.len()),
        requests_before,
        "nothing left to send at shutdown"
    );
    fake.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_item_failures_are_retried_or_dead_lettered_gzip() {
    retries_and_dead_letters(Compression::Gzip).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_item_failures_are_retried_or_dead_lettered_uncompressed() {
    retries_and_dead_letters(Compression::None).await;
}

async fn es_down_at_start(setup: bool) {
    const N: u32 = 25;
    // A port nobody listens on yet.
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    let sc = Sidecar::start(es_config(
        dir.path(),
        format!("http://{addr}"),
        Compression::Gzip,
        setup,
    ))
    .await;

    // Intake works while the output is down: the data waits in the queue.
    send_spans(&sc, N).await;
    assert_eq!(sc.admin_status("/healthz").await, 200);
    let probe_until = Instant::now() + Duration::from_millis(600);
    while Instant::now() < probe_until {
        assert_eq!(
            sc.admin_status("/readyz").await,
            503,
            "ready before Elasticsearch was up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        metric(&sc, "otel_anomaly_queued_records", &[]).await,
        N as f64
    );
    // With or without the template setup, the exporter first waits until the
    // cluster answers (templates, or GET /), so no bulk request is attempted yet.
    assert_eq!(
        metric(&sc, "otel_anomaly_bulk_requests_total", &[]).await,
        0.0
    );

    let listener = tokio::time::timeout(WAIT, async {
        loop {
            match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => break l,
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    })
    .await
    .expect("rebinding the fake's port");
    let fake = FakeEs::serve(listener, Faults::default()).await;

    // Poll /readyz; when it first answers 200, the fake must already have been asked something.
    let deadline = Instant::now() + WAIT;
    let requests_when_ready = loop {
        if sc.admin_status("/readyz").await == 200 {
            break fake.with(|s| s.requests);
        }
        assert!(
            Instant::now() < deadline,
            "/readyz did not turn 200 after Elasticsearch came up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        requests_when_ready > 0,
        "ready only after the fake Elasticsearch answered"
    );

    let want: BTreeSet<String> = (1..=N).map(doc_id).collect();
    eventually("every document delivered", WAIT, || {
        let n = fake.with(|s| s.store.len());
        async move { n >= N as usize }
    })
    .await;
    let scr = &sc;
    eventually("queue drained", WAIT, || async move {
        metric(scr, "otel_anomaly_queued_records", &[]).await == 0.0
    })
    .await;

    fake.with(|s| {
        assert!(s.unexpected.is_empty(), "{:?}", s.unexpected);
        let stored: BTreeSet<String> = s.store.keys().cloned().collect();
        assert_eq!(stored, want);
        assert!(s.created.values().all(|n| *n == 1), "{:?}", s.created);
        let sent: usize = s.bulk_requests.iter().map(Vec::len).sum();
        assert_eq!(sent, N as usize, "each document reached Elasticsearch once");
        if setup {
            assert_eq!(s.templates.len(), 3, "{:?}", s.templates);
        } else {
            assert!(s.templates.is_empty(), "setup disabled: {:?}", s.templates);
        }
    });
    assert!(dead_letters(dir.path()).is_empty(), "nothing dead-lettered");

    sc.shutdown().await;
    fake.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn es_down_at_start_then_up_delivers_everything_with_setup() {
    es_down_at_start(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn es_down_at_start_then_up_delivers_everything_without_setup() {
    es_down_at_start(false).await;
}
