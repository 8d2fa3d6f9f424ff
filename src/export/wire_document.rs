//! Span documents written from the received protobuf bytes (see
//! `receiver::wire`): the same bytes as `document::encode_span` and
//! `document::encode_resource` / `encode_scope` write from the prost types,
//! field for field (checked by `tests/wire_traces.rs` and the `wire_traces`
//! fuzz target).

use std::io::Write as _;

use base64::Engine as _;

use crate::detect::Verdict;
use crate::enrich;
use crate::export::document::{
    dropped_counts, json_f64, json_i64, json_str_bytes, shared_parts, span_event, span_head,
    span_link, DataStream, Shared, SpanHead,
};
use crate::receiver::wire::{self, Any, SpanView};

/// Attributes beyond this many are checked for duplicate keys by reading
/// the earlier ones again instead of from a list on the stack.
const KEYS_ON_STACK: usize = 32;

fn any_value(out: &mut Vec<u8>, v: Option<&[u8]>) {
    let value = v.map_or(Any::None, wire::any);
    match value {
        Any::None => out.extend_from_slice(b"null"),
        Any::String(s) => json_str_bytes(out, s),
        Any::Bool(b) => out.extend_from_slice(if b { b"true" } else { b"false" }),
        Any::Int(i) => json_i64(out, i),
        Any::Double(d) => json_f64(out, d),
        Any::Array(a) => {
            out.push(b'[');
            for (i, item) in wire::repeated(a, 1).enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                any_value(out, Some(item));
            }
            out.push(b']');
        }
        Any::KvList(kv) => attributes(out, kv, 1),
        Any::StringIndex(i) => {
            let _ = write!(out, "{i}");
        }
        Any::Bytes(b) => {
            out.push(b'"');
            out.extend_from_slice(
                base64::engine::general_purpose::STANDARD
                    .encode(b)
                    .as_bytes(),
            );
            out.push(b'"');
        }
    }
}

/// Appends the `KeyValue`s of repeated field `tag` of `msg` as a JSON
/// object; a duplicate key keeps its first value (as `document::attributes`).
pub fn attributes(out: &mut Vec<u8>, msg: &[u8], tag: u32) {
    out.push(b'{');
    let mut keys: [&[u8]; KEYS_ON_STACK] = [&[]; KEYS_ON_STACK];
    let mut first = true;
    for (n, kv) in wire::repeated(msg, tag).enumerate() {
        let (key, value) = wire::key_value(kv);
        let seen = if n <= KEYS_ON_STACK {
            keys[..n].contains(&key)
        } else {
            wire::repeated(msg, tag)
                .take(n)
                .any(|earlier| wire::key_value(earlier).0 == key)
        };
        if n < KEYS_ON_STACK {
            keys[n] = key;
        }
        if seen {
            continue;
        }
        if !first {
            out.push(b',');
        }
        first = false;
        json_str_bytes(out, key);
        out.push(b':');
        any_value(out, value);
    }
    out.push(b'}');
}

/// The string value of the first attribute named `name` in the resource,
/// if that one is a string (as `document::attr_str`).
pub fn resource_attr_str<'a>(resource: Option<&'a [u8]>, name: &str) -> Option<&'a str> {
    let resource = resource?;
    let (_, value) = wire::repeated(resource, 1)
        .map(wire::key_value)
        .find(|(k, _)| *k == name.as_bytes())?;
    match wire::any(value?) {
        Any::String(s) => std::str::from_utf8(s).ok(),
        _ => None,
    }
}

/// The resource object (as `document::encode_resource`).
pub fn encode_resource(resource: Option<&[u8]>, schema_url: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"{\"attributes\":");
    match resource {
        Some(r) => attributes(&mut out, r, 1),
        None => out.extend_from_slice(b"{}"),
    }
    if let Some(r) = resource {
        let dropped = wire::last_varint(r, 2) as u32;
        if dropped > 0 {
            let _ = write!(out, ",\"dropped_attributes_count\":{dropped}");
        }
    }
    if !schema_url.is_empty() {
        out.extend_from_slice(b",\"schema_url\":");
        json_str_bytes(&mut out, schema_url);
    }
    out.push(b'}');
    out
}

/// The scope object (as `document::encode_scope`).
pub fn encode_scope(scope: Option<&[u8]>, schema_url: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.push(b'{');
    let mut sep = "";
    if let Some(s) = scope {
        let name = wire::last_len(s, 1);
        let version = wire::last_len(s, 2);
        if !name.is_empty() {
            out.extend_from_slice(b"\"name\":");
            json_str_bytes(&mut out, name);
            sep = ",";
        }
        if !version.is_empty() {
            out.extend_from_slice(sep.as_bytes());
            out.extend_from_slice(b"\"version\":");
            json_str_bytes(&mut out, version);
            sep = ",";
        }
        if wire::repeated(s, 3).next().is_some() {
            out.extend_from_slice(sep.as_bytes());
            out.extend_from_slice(b"\"attributes\":");
            attributes(&mut out, s, 3);
            sep = ",";
        }
    }
    if !schema_url.is_empty() {
        out.extend_from_slice(sep.as_bytes());
        out.extend_from_slice(b"\"schema_url\":");
        json_str_bytes(&mut out, schema_url);
    }
    out.push(b'}');
    out
}

/// True when the span's status is ERROR.
pub fn span_is_error(s: &SpanView<'_>) -> bool {
    s.status.is_some_and(|st| st.code == 2)
}

/// Appends one span document (as `document::encode_span`).
pub fn encode_span(
    out: &mut Vec<u8>,
    s: &SpanView<'_>,
    shared: &Shared<'_>,
    ds: &DataStream,
    verdict: &Verdict,
    subject: &str,
) {
    span_head(
        out,
        &SpanHead {
            start_time_unix_nano: s.start_time_unix_nano,
            end_time_unix_nano: s.end_time_unix_nano,
            trace_id: s.trace_id,
            span_id: s.span_id,
            parent_span_id: s.parent_span_id,
            trace_state: s.trace_state,
            name: s.name,
            kind: s.kind,
            status: s.status.map(|st| (st.code, st.message)),
        },
        ds,
    );
    out.extend_from_slice(b",\"attributes\":");
    attributes(out, s.attributes, 9);
    dropped_counts(
        out,
        [
            s.dropped_attributes_count,
            s.dropped_events_count,
            s.dropped_links_count,
        ],
    );
    if !s.events.is_empty() {
        out.extend_from_slice(b",\"events\":[");
        for (i, e) in wire::repeated(s.events, 11).enumerate() {
            if i > 0 {
                out.push(b',');
            }
            let mut time = 0u64;
            let mut name: &[u8] = &[];
            for (tag, v) in wire::fields(e).map_while(Result::ok) {
                match (tag, v) {
                    (1, wire::Value::Fixed64(t)) => time = t,
                    (2, wire::Value::Len(b)) => name = b,
                    _ => {}
                }
            }
            span_event(out, time, name, |out| attributes(out, e, 3));
        }
        out.push(b']');
    }
    if !s.links.is_empty() {
        out.extend_from_slice(b",\"links\":[");
        for (i, l) in wire::repeated(s.links, 13).enumerate() {
            if i > 0 {
                out.push(b',');
            }
            let ids = (
                wire::last_len(l, 1),
                wire::last_len(l, 2),
                wire::last_len(l, 3),
            );
            span_link(out, ids, |out| attributes(out, l, 4));
        }
        out.push(b']');
    }
    shared_parts(out, shared);
    out.push(b',');
    enrich::write_anomaly_json(out, verdict, subject);
    out.push(b'}');
}
