//! The bulk API, as pure functions: build a body from documents, and sort
//! the reply into per-document actions (delivered / duplicate / retry /
//! reject). Parsing the items, never searching the body for `"errors":true`.

use serde::Deserialize;

use super::Doc;
use crate::export::document::json_str;
use crate::telemetry::Signal;

/// What to do with one document after a bulk reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ItemAction {
    /// Written (2xx).
    Delivered,
    /// Already there (409 on `create`): an earlier attempt delivered it.
    Duplicate,
    /// Retryable (429, 5xx): send again later.
    Retry(String),
    /// Rejected for good (mapping error, bad document…): dead-letter it.
    Reject(String),
}

/// Why a whole bulk request failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestFailure {
    /// Retry every document later (429, 5xx, auth, timeouts, unreadable replies).
    Retry(String),
    /// Every document is rejected for good (a 400 on the request as a whole).
    Reject(String),
}

/// The start of each signal's action line, `{"create":{"_index":"<name>","_id":`,
/// escaped once rather than per document.
#[derive(Debug, Clone)]
pub struct ActionPrefixes {
    traces: Vec<u8>,
    metrics: Vec<u8>,
    logs: Vec<u8>,
}

impl ActionPrefixes {
    /// Prefixes for the index or data stream names `index_of` gives.
    pub fn new(index_of: impl Fn(Signal) -> String) -> Self {
        let one = |signal| {
            let mut out = b"{\"create\":{\"_index\":".to_vec();
            json_str(&mut out, &index_of(signal));
            out.extend_from_slice(b",\"_id\":");
            out
        };
        Self {
            traces: one(Signal::traces),
            metrics: one(Signal::metrics),
            logs: one(Signal::logs),
        }
    }

    fn get(&self, signal: Signal) -> &[u8] {
        match signal {
            Signal::traces => &self.traces,
            Signal::metrics => &self.metrics,
            Signal::logs => &self.logs,
        }
    }
}

/// Appends `{"create":{"_index":…,"_id":…}}\n<source>\n` for each document.
pub fn build_body(docs: &[Doc], prefixes: &ActionPrefixes, out: &mut Vec<u8>) {
    for d in docs {
        out.extend_from_slice(prefixes.get(d.signal));
        json_str(out, &d.id);
        out.extend_from_slice(b"}}\n");
        out.extend_from_slice(&d.source);
        out.push(b'\n');
    }
}

/// Uncompressed bytes gathered before each write into the gzip encoder:
/// small enough to stay in the CPU cache, large enough that the encoder's
/// cost per call does not show.
const GZIP_CHUNK: usize = 64 * 1024;

/// The body [`build_body`] makes, gzip-compressed (level 1) as it is built:
/// the uncompressed body is never held whole, only one chunk of it at a
/// time (saves writing and reading back ~1 KiB per document through memory,
/// and the large buffer's allocation).
pub fn build_body_gzip(docs: &[Doc], prefixes: &ActionPrefixes) -> std::io::Result<Vec<u8>> {
    use std::io::Write;
    let raw: usize = docs.iter().map(|d| d.source.len() + 96).sum();
    // Level 1 compresses these bodies about 8x; the output grows if it must.
    let mut enc = flate2::write::GzEncoder::new(
        Vec::with_capacity(raw / 6 + 64),
        flate2::Compression::fast(),
    );
    let mut chunk = Vec::with_capacity(GZIP_CHUNK + 4096);
    for d in docs {
        build_body(std::slice::from_ref(d), prefixes, &mut chunk);
        if chunk.len() >= GZIP_CHUNK {
            enc.write_all(&chunk)?;
            chunk.clear();
        }
    }
    enc.write_all(&chunk)?;
    enc.finish()
}

#[derive(Debug, Deserialize)]
struct BulkReply {
    #[serde(default)]
    items: Vec<ReplyItem>,
}

/// One reply item, `{"<action>":{…}}`: the object under its first key. Read
/// without a map per item (a `HashMap` and a key `String` for each of
/// thousands of items showed in profiles).
#[derive(Debug)]
struct ReplyItem(Option<BulkItem>);

impl<'de> Deserialize<'de> for ReplyItem {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = ReplyItem;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a bulk reply item object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<ReplyItem, A::Error> {
                let mut first = None;
                while map.next_key::<serde::de::IgnoredAny>()?.is_some() {
                    if first.is_none() {
                        first = Some(map.next_value::<BulkItem>()?);
                    } else {
                        map.next_value::<serde::de::IgnoredAny>()?;
                    }
                }
                Ok(ReplyItem(first))
            }
        }
        d.deserialize_map(Visitor)
    }
}

#[derive(Debug, Deserialize)]
struct BulkItem {
    status: u16,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

/// Sorts one item by its status.
pub fn classify_item(status: u16, error: Option<&serde_json::Value>) -> ItemAction {
    let reason = || match error {
        Some(e) => {
            let ty = e.get("type").and_then(|t| t.as_str()).unwrap_or("error");
            let why = e.get("reason").and_then(|t| t.as_str()).unwrap_or("");
            format!("{status} {ty}: {why}")
        }
        None => format!("status {status}"),
    };
    match status {
        200..=299 => ItemAction::Delivered,
        409 => ItemAction::Duplicate,
        429 | 500..=599 => ItemAction::Retry(reason()),
        _ => ItemAction::Reject(reason()),
    }
}

/// Sorts a whole reply: per-document actions in request order, or a
/// failure of the request as a whole.
pub fn classify_response(
    http_status: u16,
    body: &[u8],
    sent: usize,
) -> Result<Vec<ItemAction>, RequestFailure> {
    let snippet = || String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
    match http_status {
        200..=299 => {}
        400 => {
            return Err(RequestFailure::Reject(format!(
                "bulk request rejected (400): {}",
                snippet()
            )))
        }
        413 => {
            return Err(RequestFailure::Retry(
                "bulk request too large (413): lower export.elasticsearch.bulk.max_bytes".into(),
            ))
        }
        s => {
            return Err(RequestFailure::Retry(format!(
                "bulk request failed ({s}): {}",
                snippet()
            )))
        }
    }
    let reply: BulkReply = serde_json::from_slice(body)
        .map_err(|e| RequestFailure::Retry(format!("unreadable bulk reply: {e}")))?;
    if reply.items.len() != sent {
        return Err(RequestFailure::Retry(format!(
            "bulk reply has {} items for {sent} documents",
            reply.items.len()
        )));
    }
    Ok(reply
        .items
        .iter()
        .map(|item| match &item.0 {
            Some(it) => classify_item(it.status, it.error.as_ref()),
            None => ItemAction::Retry("empty bulk reply item".into()),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_are_sorted_by_status() {
        let body = br#"{"errors":true,"took":3,"items":[
            {"create":{"_index":"t","_id":"1","status":201}},
            {"create":{"_index":"t","_id":"2","status":409,"error":{"type":"version_conflict_engine_exception","reason":"exists"}}},
            {"create":{"_index":"t","_id":"3","status":429,"error":{"type":"es_rejected_execution_exception","reason":"queue full"}}},
            {"create":{"_index":"t","_id":"4","status":503,"error":{"type":"unavailable_shards_exception","reason":"x"}}},
            {"create":{"_index":"t","_id":"5","status":400,"error":{"type":"mapper_parsing_exception","reason":"failed to parse field [x]"}}}
        ]}"#;
        let actions = classify_response(200, body, 5).unwrap();
        assert_eq!(actions[0], ItemAction::Delivered);
        assert_eq!(actions[1], ItemAction::Duplicate);
        assert!(matches!(&actions[2], ItemAction::Retry(r) if r.contains("429")));
        assert!(matches!(&actions[3], ItemAction::Retry(r) if r.contains("503")));
        assert!(
            matches!(&actions[4], ItemAction::Reject(r) if r.contains("mapper_parsing_exception"))
        );
    }

    #[test]
    fn any_action_name_is_read_and_an_empty_item_is_retried() {
        let body = br#"{"items":[{"index":{"_id":"1","status":201,"_shards":{"total":1}}},{},
            {"update":{"status":404,"error":{"type":"document_missing_exception","reason":"gone"}}}]}"#;
        let actions = classify_response(200, body, 3).unwrap();
        assert_eq!(actions[0], ItemAction::Delivered);
        assert_eq!(
            actions[1],
            ItemAction::Retry("empty bulk reply item".into())
        );
        assert!(
            matches!(&actions[2], ItemAction::Reject(r) if r.contains("404 document_missing_exception: gone"))
        );
        // An item that is not an object makes the reply unreadable (retried as a whole).
        assert!(matches!(
            classify_response(200, br#"{"items":[7]}"#, 1),
            Err(RequestFailure::Retry(_))
        ));
    }

    #[test]
    fn whole_request_failures() {
        assert!(matches!(
            classify_response(429, b"busy", 1),
            Err(RequestFailure::Retry(_))
        ));
        assert!(matches!(
            classify_response(502, b"", 1),
            Err(RequestFailure::Retry(_))
        ));
        assert!(matches!(
            classify_response(401, b"", 1),
            Err(RequestFailure::Retry(_))
        ));
        assert!(matches!(
            classify_response(400, b"bad", 1),
            Err(RequestFailure::Reject(_))
        ));
        assert!(matches!(
            classify_response(200, b"not json", 1),
            Err(RequestFailure::Retry(_))
        ));
        // A reply that does not account for every document is not trusted.
        let body = br#"{"errors":false,"items":[{"create":{"status":201}}]}"#;
        assert!(matches!(
            classify_response(200, body, 2),
            Err(RequestFailure::Retry(_))
        ));
    }

    #[test]
    fn gzip_body_inflates_to_the_plain_body() {
        use std::io::Read;
        // Documents of many sizes, so chunk boundaries fall everywhere.
        let docs: Vec<Doc> = (0..400)
            .map(|i| {
                let source = format!("{{\"n\":{i},\"pad\":\"{}\"}}", "x".repeat(i * 37 % 1500));
                let signal = [Signal::traces, Signal::metrics, Signal::logs][i % 3];
                Doc::new(signal, format!("id-{i}"), source.into_bytes())
            })
            .collect();
        let prefixes = ActionPrefixes::new(|s| format!("{}-otel-test", s.as_str()));
        let mut plain = Vec::new();
        build_body(&docs, &prefixes, &mut plain);
        assert!(plain.len() > 4 * GZIP_CHUNK, "{}", plain.len());
        for n in [0, 1, docs.len()] {
            let mut want = Vec::new();
            build_body(&docs[..n], &prefixes, &mut want);
            let gz = build_body_gzip(&docs[..n], &prefixes).unwrap();
            let mut got = Vec::new();
            flate2::read::GzDecoder::new(&gz[..])
                .read_to_end(&mut got)
                .unwrap();
            assert_eq!(got, want, "{n} documents");
        }
    }

    #[test]
    fn body_is_ndjson_with_create_actions() {
        let docs = vec![Doc::new(
            Signal::traces,
            "a\"b".into(),
            b"{\"x\":1}".to_vec(),
        )];
        let mut out = Vec::new();
        build_body(
            &docs,
            &ActionPrefixes::new(|_| "traces-otel-prod".into()),
            &mut out,
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"create\":{\"_index\":\"traces-otel-prod\",\"_id\":\"a\\\"b\"}}\n{\"x\":1}\n"
        );
    }
}
