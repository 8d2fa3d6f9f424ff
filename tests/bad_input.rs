//! Bad input against the real sidecar over real sockets: every refusal has the
//! status/code the OTLP spec asks for and a message that says what to change,
//! and the sidecar keeps serving valid requests afterwards.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use common::*;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use otel_anomaly::config::{ElasticsearchSettings, IndexMode};
use prost::Message;
use tonic::codec::CompressionEncoding;
use tonic::Code;
use tonic_types::StatusExt;

const MAX_REQUEST: usize = 1024;
const MAX_DECOMPRESSED: usize = 8192;

/// Small receiver limits, no Elasticsearch (NDJSON output under `dir`).
fn small_limits(dir: &Path) -> otel_anomaly::config::Config {
    let mut cfg = base_config(dir);
    cfg.settings.receiver.max_request_bytes = MAX_REQUEST;
    cfg.settings.receiver.max_decompressed_bytes = MAX_DECOMPRESSED;
    cfg
}

fn traces_file(dir: &Path) -> std::path::PathBuf {
    dir.join("ndjson")
        .join(format!("traces-otel-{ENV}.000001.ndjson"))
}

/// The span documents written so far (empty if the file does not exist yet).
fn ndjson_docs(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(traces_file(dir))
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("every NDJSON line is a JSON document"))
        .collect()
}

async fn rpc_status(resp: reqwest::Response) -> RpcStatus {
    let ct = resp.headers()[reqwest::header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(
        ct, "application/x-protobuf",
        "error body of a protobuf request is protobuf"
    );
    let body = resp.bytes().await.expect("body");
    RpcStatus::decode(body.as_ref()).expect("error body is a google.rpc.Status")
}

async fn json_body(resp: reqwest::Response) -> serde_json::Value {
    let ct = resp.headers()[reqwest::header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .to_string();
    assert!(ct.starts_with("application/json"), "content type {ct}");
    let body = resp.bytes().await.expect("body");
    serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&body)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_protobuf_is_400_with_a_decodable_status() {
    let dir = tempfile::tempdir().unwrap();
    let sc = Sidecar::start(small_limits(dir.path())).await;

    let mut body = trace_request(vec![span(1, "GET /cart"), span(2, "GET /cart")]).encode_to_vec();
    body.truncate(body.len() - 5);
    let resp = sc
        .post("/v1/traces", "application/x-protobuf", None, body)
        .await;
    assert_eq!(resp.status().as_u16(), 400);
    let st = rpc_status(resp).await;
    assert_eq!(st.code, Code::InvalidArgument as i32);
    assert!(
        st.message.contains("invalid protobuf"),
        "unclear message: {:?}",
        st.message
    );

    sc.assert_still_serving(100).await;
    sc.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_json_is_400_with_a_json_message() {
    let dir = tempfile::tempdir().unwrap();
    let sc = Sidecar::start(small_limits(dir.path())).await;

    let resp = sc
        .post(
            "/v1/traces",
            "application/json",
            None,
            br#"{"resourceSpans": [ {"#.to_vec(),
        )
        .await;
    assert_eq!(resp.status().as_u16(), 400);
    let v = json_body(resp).await;
    let msg = v["message"]
        .as_str()
        .expect("JSON error body has a message");
    assert!(msg.contains("invalid JSON"), "unclear message: {msg:?}");
    assert_eq!(v["code"], 3);

    sc.assert_still_serving(100).await;
    sc.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_content_type_is_415() {
    let dir = tempfile::tempdir().unwrap();
    let sc = Sidecar::start(small_limits(dir.path())).await;

    let resp = sc
        .post("/v1/traces", "text/plain", None, b"hello".to_vec())
        .await;
    assert_eq!(resp.status().as_u16(), 415);
    let v = json_body(resp).await;
    let msg = v["message"].as_str().expect("message");
    for word in [
        "Content-Type",
        "text/plain",
        "application/x-protobuf",
        "application/json",
    ] {
        assert!(msg.contains(word), "message {msg:?} should mention {word}");
    }

    sc.assert_still_serving(100).await;
    sc.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_over_max_request_bytes_is_413_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let sc = Sidecar::start(small_limits(dir.path())).await;

    // A valid request, just too big.
    let body = trace_request(vec![span(1, &"x".repeat(2 * MAX_REQUEST))]).encode_to_vec();
    assert!(body.len() > MAX_REQUEST);
    let resp = sc
        .post("/v1/traces", "application/x-protobuf", None, body)
        .await;
    assert_eq!(resp.status().as_u16(), 413);
    let st = rpc_status(resp).await;
    assert!(
        st.message.contains("receiver.max_request_bytes")
            && st.message.contains(&MAX_REQUEST.to_string()),
        "message should name the setting and the limit: {:?}",
        st.message
    );

    // Same as JSON: the error comes back as JSON.
    let json = format!(
        r#"{{"resourceSpans":[],"pad":"{}"}}"#,
        "y".repeat(2 * MAX_REQUEST)
    );
    let resp = sc
        .post("/v1/traces", "application/json", None, json.into_bytes())
        .await;
    assert_eq!(resp.status().as_u16(), 413);
    let v = json_body(resp).await;
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("receiver.max_request_bytes"),
        "{v}"
    );

    let text = sc.metrics_text().await;
    assert_eq!(
        metric_value(
            &text,
            "otel_anomaly_rejected_records_total",
            &[("reason", "too_large")]
        ),
        Some(2.0),
        "{text}"
    );

    sc.assert_still_serving(100).await;
    sc.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_bomb_is_413_naming_max_decompressed_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let sc = Sidecar::start(small_limits(dir.path())).await;

    // 512 KiB of zeros gzip to about half a kilobyte: under the size-as-sent cap, far over the inflated cap.
    let bomb = gzip(&vec![0u8; 512 << 10]);
    assert!(bomb.len() <= MAX_REQUEST, "bomb is {} bytes", bomb.len());
    let resp = sc
        .post("/v1/traces", "application/x-protobuf", Some("gzip"), bomb)
        .await;
    assert_eq!(resp.status().as_u16(), 413);
    let st = rpc_status(resp).await;
    assert!(
        st.message.contains("receiver.max_decompressed_bytes")
            && st.message.contains(&MAX_DECOMPRESSED.to_string()),
        "message should name the setting and the limit: {:?}",
        st.message
    );

    // A valid gzip body is accepted.
    let good = trace_request(vec![span(7, "gzipped")]).encode_to_vec();
    let resp = sc
        .post(
            "/v1/traces",
            "application/x-protobuf",
            Some("gzip"),
            gzip(&good),
        )
        .await;
    assert_eq!(resp.status().as_u16(), 200);

    // Broken gzip is a 400 that says so, not a 413.
    let resp = sc
        .post(
            "/v1/traces",
            "application/x-protobuf",
            Some("gzip"),
            b"\x1f\x8bnot gzip at all".to_vec(),
        )
        .await;
    assert_eq!(resp.status().as_u16(), 400);
    let st = rpc_status(resp).await;
    assert!(st.message.contains("gzip"), "{:?}", st.message);

    sc.assert_still_serving(100).await;
    sc.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_protobuf_is_200_and_empty_json_is_400() {
    let dir = tempfile::tempdir().unwrap();
    let sc = Sidecar::start(small_limits(dir.path())).await;

    // An empty protobuf message is a valid, empty request.
    let resp = sc
        .post("/v1/traces", "application/x-protobuf", None, Vec::new())
        .await;
    assert_eq!(resp.status().as_u16(), 200);
    let body = resp.bytes().await.unwrap();
    let decoded = ExportTraceServiceResponse::decode(body.as_ref()).expect("protobuf response");
    assert_eq!(decoded.partial_success, None);

    // An empty JSON body is not a JSON document.
    let resp = sc
        .post("/v1/traces", "application/json", None, Vec::new())
        .await;
    assert_eq!(resp.status().as_u16(), 400);
    let v = json_body(resp).await;
    let msg = v["message"].as_str().expect("message");
    assert!(msg.contains("empty body"), "{msg:?}");

    // `{}` is the smallest valid JSON request.
    let resp = sc
        .post("/v1/traces", "application/json", None, b"{}".to_vec())
        .await;
    assert_eq!(resp.status().as_u16(), 200);

    sc.assert_still_serving(100).await;
    sc.shutdown().await;
}

/// Two valid spans (numbers `a`, `a+1`) and three invalid ones.
fn mixed_request(a: u32) -> ExportTraceServiceRequest {
    let mut zero_trace = span(a + 10, "bad");
    zero_trace.trace_id = vec![0; 16];
    let mut zero_span = span(a + 11, "bad");
    zero_span.span_id = vec![0; 8];
    let mut short_trace = span(a + 12, "bad");
    short_trace.trace_id = vec![1; 8];
    trace_request(vec![
        span(a, "ok"),
        zero_trace,
        zero_span,
        short_trace,
        span(a + 1, "ok"),
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_span_ids_are_partial_success_over_http_and_grpc() {
    let dir = tempfile::tempdir().unwrap();
    let sc = Sidecar::start(small_limits(dir.path())).await;

    let resp = sc.post_traces(&mixed_request(1)).await;
    assert_eq!(resp.status().as_u16(), 200);
    let body = resp.bytes().await.unwrap();
    let decoded = ExportTraceServiceResponse::decode(body.as_ref()).expect("protobuf response");
    let partial = decoded.partial_success.expect("partial_success set");
    assert_eq!(partial.rejected_spans, 3);
    assert!(
        partial.error_message.contains("trace_id"),
        "{:?}",
        partial.error_message
    );

    let mut client = sc.grpc().await;
    let reply = tokio::time::timeout(WAIT, client.export(mixed_request(101)))
        .await
        .expect("grpc timed out")
        .expect("grpc export succeeds");
    let partial = reply
        .into_inner()
        .partial_success
        .expect("partial_success set");
    assert_eq!(partial.rejected_spans, 3);
    assert!(!partial.error_message.is_empty());

    // OTLP/JSON: same partial success, lowerCamelCase fields.
    let json = format!(
        r#"{{"resourceSpans":[{{"scopeSpans":[{{"spans":[
          {{"traceId":"00000000000000000000000000000000","spanId":"eee19b7ec3c1b174","name":"bad"}},
          {{"traceId":"{}","spanId":"{}","name":"ok","startTimeUnixNano":"1700000000000000000","endTimeUnixNano":"1700000000001000000"}}]}}]}}]}}"#,
        hex(&trace_id(200)),
        hex(&span_id(200))
    );
    let resp = sc
        .post("/v1/traces", "application/json", None, json.into_bytes())
        .await;
    assert_eq!(resp.status().as_u16(), 200);
    let v = json_body(resp).await;
    let rejected = &v["partialSuccess"]["rejectedSpans"];
    assert!(rejected == 1 || rejected == "1", "{v}");
    assert!(
        v["partialSuccess"]["errorMessage"]
            .as_str()
            .is_some_and(|m| m.contains("trace_id")),
        "{v}"
    );

    sc.assert_still_serving(500).await;

    let text = sc.metrics_text().await;
    assert_eq!(
        metric_value(
            &text,
            "otel_anomaly_rejected_records_total",
            &[("reason", "invalid_record")]
        ),
        Some(7.0),
        "{text}"
    );

    // Only the valid spans reach the output.
    let want: BTreeSet<String> = [1, 2, 101, 102, 200, 500]
        .iter()
        .map(|i| doc_id(*i))
        .collect();
    let want_len = want.len();
    eventually("the valid spans in the NDJSON output", WAIT, || {
        let n = ndjson_docs(dir.path()).len();
        async move { n >= want_len }
    })
    .await;
    sc.shutdown().await;
    let got: BTreeSet<String> = ndjson_docs(dir.path())
        .iter()
        .map(|d| {
            format!(
                "{}{}",
                d["trace_id"].as_str().unwrap(),
                d["span_id"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(got, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_message_over_the_decompressed_cap_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let sc = Sidecar::start(small_limits(dir.path())).await;

    // Uncompressed and over the cap: tonic refuses it from the length prefix with OUT_OF_RANGE.
    let big = trace_request(vec![span(1, &"x".repeat(2 * MAX_DECOMPRESSED))]);
    let mut client = sc.grpc().await;
    let err = tokio::time::timeout(WAIT, client.export(big.clone()))
        .await
        .expect("grpc timed out")
        .expect_err("over the cap");
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
    assert!(
        err.message().contains("too large")
            && err.message().contains(&MAX_DECOMPRESSED.to_string()),
        "{:?}",
        err.message()
    );

    // Gzip, small as sent but inflating past the cap: RESOURCE_EXHAUSTED, without RetryInfo
    // (OTel exporters retry RESOURCE_EXHAUSTED only with RetryInfo, and resending would not help).
    let bomb = trace_request(vec![span(2, &"x".repeat(16 * MAX_DECOMPRESSED))]);
    let mut gz_client = sc.grpc().await.send_compressed(CompressionEncoding::Gzip);
    let err = tokio::time::timeout(WAIT, gz_client.export(bomb))
        .await
        .expect("grpc timed out")
        .expect_err("over the cap once inflated");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message().contains("size limit")
            && err.message().contains(&MAX_DECOMPRESSED.to_string()),
        "{:?}",
        err.message()
    );
    assert!(
        err.get_details_retry_info().is_none(),
        "a too-large message must not invite retries"
    );

    // Still serving, over gRPC (plain and gzip) and HTTP.
    for c in [&mut client, &mut gz_client] {
        let ok = tokio::time::timeout(WAIT, c.export(trace_request(vec![span(3, "fine")])))
            .await
            .expect("grpc timed out")
            .expect("valid request accepted");
        assert_eq!(ok.into_inner().partial_success, None);
    }
    sc.assert_still_serving(100).await;
    sc.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_full_is_refused_with_retry_hints_and_not_ready() {
    const CAP: usize = 5;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = base_config(dir.path());
    cfg.settings.pipeline.max_queued_records = CAP;
    // The in-memory cap alone: with the WAL these would wait on disk.
    cfg.settings.wal.enabled = false;
    // Nothing listens on port 1: nothing drains, and the output is never reached.
    let mut es = ElasticsearchSettings {
        urls: vec!["http://127.0.0.1:1".into()],
        mode: IndexMode::Index,
        ..Default::default()
    };
    es.bulk.initial_backoff = Duration::from_millis(20);
    es.bulk.max_backoff = Duration::from_millis(200);
    es.bulk.timeout = Duration::from_secs(2);
    cfg.settings.export.elasticsearch = Some(es);
    cfg.settings.shutdown_timeout = Duration::from_secs(1);
    let sc = Sidecar::start(cfg).await;

    // One span per request: exactly CAP are accepted, the next is refused.
    let mut accepted = 0;
    let refused = loop {
        assert!(
            accepted <= CAP,
            "more than pipeline.max_queued_records accepted"
        );
        let resp = sc
            .post_traces(&trace_request(vec![span(accepted as u32 + 1, "GET /")]))
            .await;
        if resp.status().as_u16() == 200 {
            accepted += 1;
            continue;
        }
        break resp;
    };
    assert_eq!(accepted, CAP);
    assert_eq!(refused.status().as_u16(), 429);
    let retry_after = refused
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .expect("429 carries Retry-After")
        .to_str()
        .unwrap()
        .parse::<u64>()
        .expect("Retry-After in seconds");
    assert!(retry_after >= 1);
    let st = rpc_status(refused).await;
    assert_eq!(st.code, Code::ResourceExhausted as i32);
    assert!(
        st.message.contains("queue full") && st.message.contains("pipeline.max_queued_records"),
        "{:?}",
        st.message
    );

    let mut client = sc.grpc().await;
    let err = tokio::time::timeout(WAIT, client.export(trace_request(vec![span(50, "GET /")])))
        .await
        .expect("grpc timed out")
        .expect_err("queue is full");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    let info = err
        .get_details_retry_info()
        .expect("RESOURCE_EXHAUSTED carries RetryInfo");
    assert!(
        info.retry_delay.is_some_and(|d| d > Duration::ZERO),
        "{info:?}"
    );
    assert!(
        err.message().contains("pipeline.max_queued_records"),
        "{:?}",
        err.message()
    );

    assert_eq!(sc.admin_status("/healthz").await, 200);
    assert_eq!(
        sc.admin_status("/readyz").await,
        503,
        "Elasticsearch was never reached"
    );
    let text = sc.metrics_text().await;
    assert_eq!(
        metric_value(
            &text,
            "otel_anomaly_rejected_records_total",
            &[("signal", "traces"), ("reason", "queue_full")]
        ),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        metric_value(&text, "otel_anomaly_queued_records", &[]),
        Some(CAP as f64),
        "{text}"
    );
    assert_eq!(
        metric_value(&text, "otel_anomaly_ready", &[]),
        Some(0.0),
        "{text}"
    );

    // Staged shutdown still ends, at the deadline, although the queue never drained.
    sc.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_json_per_spec_is_scored_into_ndjson_output() {
    let dir = tempfile::tempdir().unwrap();
    let sc = Sidecar::start(base_config(dir.path())).await;
    assert_eq!(
        sc.admin_status("/readyz").await,
        200,
        "file output is ready at once"
    );

    // The example of the OTLP specification: hex ids, string-encoded 64-bit ints, enum numbers.
    let json = br#"{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"my.service"}}]},
      "scopeSpans":[{"scope":{"name":"my.library","version":"1.0.0","attributes":[{"key":"my.scope.attribute","value":{"stringValue":"some scope attribute"}}]},
        "spans":[{"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174","parentSpanId":"eee19b7ec3c1b173",
          "name":"I'm a server span","startTimeUnixNano":"1544712660000000000","endTimeUnixNano":"1544712661000000000",
          "kind":2,"attributes":[{"key":"my.span.attr","value":{"stringValue":"some value"}},{"key":"count","value":{"intValue":"42"}}]}]}]}]}"#;
    let resp = sc
        .post("/v1/traces", "application/json", None, json.to_vec())
        .await;
    assert_eq!(resp.status().as_u16(), 200);
    let v = json_body(resp).await;
    assert!(v.is_object(), "{v}");
    let rejected = &v["partialSuccess"]["rejectedSpans"];
    assert!(
        rejected.is_null() || rejected == 0 || rejected == "0",
        "{v}"
    );

    let mut found = None;
    eventually("the span in the NDJSON output", WAIT, || {
        found = ndjson_docs(dir.path())
            .into_iter()
            .find(|d| d["trace_id"] == "5b8efff798038103d269b633813fc60c");
        let done = found.is_some();
        async move { done }
    })
    .await;
    let doc = found.unwrap();
    assert_eq!(doc["span_id"], "eee19b7ec3c1b174");
    assert_eq!(doc["parent_span_id"], "eee19b7ec3c1b173");
    assert_eq!(doc["name"], "I'm a server span");
    assert_eq!(doc["kind"], "Server");
    assert_eq!(doc["duration"], 1_000_000_000u64);
    let anomaly = doc["anomaly"].as_object().expect("anomaly object");
    assert!(anomaly["score"].is_number(), "{doc}");
    assert!(anomaly["severity"].is_string(), "{doc}");
    assert!(anomaly["explanation"].is_string(), "{doc}");

    sc.assert_still_serving(100).await;
    sc.shutdown().await;
}
