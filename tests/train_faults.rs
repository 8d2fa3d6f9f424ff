//! `train` against faults a real server does not produce on demand: a small
//! in-process fake of the few Elasticsearch endpoints `train` calls answers
//! 401, 403, mixed mappings and incomplete pages (failed shards). Each case
//! must end in an error naming what to fix, or, for a page that is
//! incomplete once, in a complete read: pages are never skipped.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use otel_anomaly::config::{self, FlagOverrides};
use otel_anomaly::train::job::{self, TargetOverrides};
use otel_anomaly::train::TrainError;
use serde_json::json;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Unauthorized,
    Forbidden,
    Mixed,
    AlwaysPartial,
    PartialOnce,
    ScrollPartial,
}

struct Fake {
    mode: Mode,
    searches: AtomicUsize,
    scrolls: AtomicUsize,
    auth: std::sync::Mutex<Option<String>>,
}

/// A JSON reply (axum's `Json` needs a feature this crate does not enable).
fn json_reply(v: serde_json::Value) -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response()
}

fn es_error(status: u16, ty: &str, reason: &str) -> Response {
    (
        StatusCode::from_u16(status).expect("status"),
        json_reply(json!({"error": {"type": ty, "reason": reason}, "status": status})),
    )
        .into_response()
}

fn hit(i: u64) -> serde_json::Value {
    let ns = 1_800_000_000_000_000_000u64 + i * 1_000_000_000;
    let ts = humantime::format_rfc3339_nanos(
        std::time::UNIX_EPOCH + std::time::Duration::from_nanos(ns),
    )
    .to_string();
    json!({
        "_index": ".ds-traces-otel-prod-000001",
        "_id": format!("d{i}"),
        "_source": {"@timestamp": ts, "name": "GET /", "kind": "Server", "duration": 1_000_000,
                    "resource": {"attributes": {"service.name": "checkout"}}},
        "sort": [ns, i],
    })
}

fn page(hits: Vec<serde_json::Value>, failed: u64, extra: serde_json::Value) -> Response {
    let mut v = json!({
        "took": 1, "timed_out": false,
        "_shards": {"total": 2, "successful": 2 - failed, "skipped": 0, "failed": failed,
                    "failures": if failed > 0 { json!([{"shard": 1, "reason": {"type": "node_disconnected_exception"}}]) } else { json!([]) }},
        "hits": {"total": {"value": 2, "relation": "eq"}, "hits": hits},
    });
    if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
        o.extend(e.clone());
    }
    json_reply(v).into_response()
}

async fn handle(
    State(f): State<Arc<Fake>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(a) = headers.get("authorization").and_then(|v| v.to_str().ok()) {
        *f.auth.lock().expect("lock") = Some(a.to_string());
    }
    if f.mode == Mode::Unauthorized {
        return es_error(
            401,
            "security_exception",
            "unable to authenticate with provided credentials",
        );
    }
    let path = uri.path();
    let is_traces = path.starts_with("/traces-otel-prod");
    if path.ends_with("/_mapping") {
        if !is_traces {
            return es_error(404, "index_not_found_exception", "no such index");
        }
        if f.mode == Mode::Forbidden {
            return es_error(
                403,
                "security_exception",
                "action [indices:admin/mappings/get] is unauthorized for API key id [k1]",
            );
        }
        let second = if f.mode == Mode::Mixed {
            "keyword"
        } else {
            "long"
        };
        return json_reply(json!({
            ".ds-traces-otel-prod-000001": {"mappings": {"properties": {"@timestamp": {"type": "date_nanos"}, "duration": {"type": "long"}}}},
            ".ds-traces-otel-prod-000002": {"mappings": {"properties": {"@timestamp": {"type": "date_nanos"}, "duration": {"type": second}}}},
        }))
        .into_response();
    }
    if path.ends_with("/_pit") && method == Method::POST {
        if f.mode == Mode::ScrollPartial {
            return es_error(404, "", "no handler found for uri");
        }
        return json_reply(json!({"id": "pit-1"})).into_response();
    }
    if method == Method::DELETE && (path == "/_pit" || path == "/_search/scroll") {
        return json_reply(json!({"succeeded": true})).into_response();
    }
    if path == "/_search/scroll" {
        let n = f.scrolls.fetch_add(1, Ordering::SeqCst);
        assert!(n == 0, "a failed scroll page must not be asked for again");
        return page(vec![], 1, json!({"_scroll_id": "s1"}));
    }
    if path.ends_with("/_search") {
        let n = f.searches.fetch_add(1, Ordering::SeqCst);
        let req: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        return match f.mode {
            Mode::AlwaysPartial => page(vec![hit(0)], 1, json!({"pit_id": "pit-1"})),
            Mode::PartialOnce => match n {
                0 => page(vec![hit(0)], 1, json!({"pit_id": "pit-1"})),
                _ if req.get("search_after").is_none() => {
                    page(vec![hit(0), hit(1)], 0, json!({"pit_id": "pit-1"}))
                }
                _ => page(vec![], 0, json!({"pit_id": "pit-1"})),
            },
            Mode::ScrollPartial => page(vec![hit(0)], 0, json!({"_scroll_id": "s1"})),
            _ => page(vec![], 0, json!({})),
        };
    }
    es_error(
        400,
        "illegal_argument_exception",
        &format!("unexpected {method} {path}"),
    )
}

async fn start(mode: Mode) -> (String, Arc<Fake>) {
    let fake = Arc::new(Fake {
        mode,
        searches: AtomicUsize::new(0),
        scrolls: AtomicUsize::new(0),
        auth: std::sync::Mutex::new(None),
    });
    let app = axum::Router::new()
        .fallback(handle)
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}"), fake)
}

async fn train(url: &str, key: Option<&str>) -> Result<otel_anomaly::train::Summary, TrainError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut flags = FlagOverrides::default();
    flags.set("environment", Some("prod"));
    flags.set("train.since", Some("3650d"));
    flags.set("train.max_retries", Some(2));
    flags.set("train.out", Some(dir.path().join("m.snap").display()));
    let cfg = config::resolve(None, &BTreeMap::new(), &flags).expect("config");
    let key_file = dir.path().join("key");
    let mut o = TargetOverrides {
        url: Some(url.to_string()),
        ..Default::default()
    };
    if let Some(k) = key {
        std::fs::write(&key_file, format!("{k}\n")).expect("key file");
        o.api_key_file = Some(key_file);
    }
    job::train(&cfg, &o, false).await
}

#[tokio::test]
async fn a_rejected_key_names_the_key_file() {
    let (url, _) = start(Mode::Unauthorized).await;
    let err = train(&url, Some("d3Jvbmc=")).await.unwrap_err().to_string();
    assert!(
        err.contains("rejected the credentials (401")
            && err.contains("--api-key-file")
            && err.contains(&url),
        "{err}"
    );
}

#[tokio::test]
async fn a_key_without_read_privileges_names_the_role() {
    let (url, fake) = start(Mode::Forbidden).await;
    let err = train(&url, Some("a2V5")).await.unwrap_err().to_string();
    assert!(
        err.contains("may not read traces-otel-prod")
            && err.contains("view_index_metadata")
            && err.contains("Learn from history"),
        "{err}"
    );
    let sent = fake.auth.lock().expect("lock").clone();
    assert_eq!(
        sent.as_deref(),
        Some("ApiKey a2V5"),
        "the key file's content is sent"
    );
}

#[tokio::test]
async fn mixed_mappings_name_both_indices() {
    let (url, _) = start(Mode::Mixed).await;
    let err = train(&url, None).await.unwrap_err().to_string();
    assert!(
        err.contains("mixed mappings for duration")
            && err.contains(".ds-traces-otel-prod-000001 (long)")
            && err.contains(".ds-traces-otel-prod-000002 (keyword)"),
        "{err}"
    );
}

#[tokio::test]
async fn a_page_that_stays_incomplete_stops_training() {
    let (url, fake) = start(Mode::AlwaysPartial).await;
    let err = train(&url, None).await.unwrap_err();
    assert!(
        matches!(err, TrainError::PartialPage { page: 1, .. }),
        "{err}"
    );
    let text = err.to_string();
    assert!(
        text.contains("incomplete") && text.contains("1 shard(s) failed"),
        "{text}"
    );
    // The first try and max_retries (2) more, then the error: never a skip.
    assert_eq!(fake.searches.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_page_incomplete_once_is_asked_again_and_nothing_is_lost() {
    let (url, fake) = start(Mode::PartialOnce).await;
    let summary = train(&url, None).await.expect("train succeeds");
    assert_eq!(summary.total(), 2, "{summary}");
    assert_eq!(fake.searches.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn an_incomplete_scroll_page_stops_at_once() {
    let (url, fake) = start(Mode::ScrollPartial).await;
    let err = train(&url, None).await.unwrap_err();
    assert!(
        matches!(err, TrainError::PartialPage { page: 2, .. }),
        "{err}"
    );
    assert_eq!(fake.scrolls.load(Ordering::SeqCst), 1);
}
