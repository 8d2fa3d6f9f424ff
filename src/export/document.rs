//! Elasticsearch documents in Elastic's OpenTelemetry-native layout (the
//! `otel` mapping mode of the collector's Elasticsearch exporter: `@timestamp`,
//! `attributes`, `resource.attributes`, `scope`, `trace_id`, …) plus the
//! `anomaly` object. Written straight into a byte buffer: no intermediate
//! `serde_json::Value`.

use std::io::Write as _;

use base64::Engine as _;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use opentelemetry_proto::tonic::metrics::v1::{
    exemplar, metric, number_data_point, ExponentialHistogramDataPoint, HistogramDataPoint, Metric,
    NumberDataPoint, SummaryDataPoint,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{span, status, Span};

use crate::detect::Verdict;
use crate::enrich;

/// Bytes that JSON strings must escape: control characters, `"` and `\\`.
const fn needs_escape(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\'
}

/// Why a metric point carries no verdict.
pub const NOT_SCORED_POINT: &str = "first point of a cumulative series or an empty interval";

/// Appends `s` as a JSON string. Runs of plain bytes are copied whole;
/// only `"`, `\\` and control characters are escaped (as serde_json does).
pub fn json_str(out: &mut Vec<u8>, s: &str) {
    json_str_bytes(out, s.as_bytes());
}

/// [`json_str`] of UTF-8 text held as bytes (checked by the caller; the
/// escaping only looks at ASCII bytes, so the output is the same).
pub fn json_str_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        // Eight plain bytes at a time (most text has nothing to escape).
        if let Some(chunk) = bytes.get(i..i + 8) {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            if !word_needs_escape(u64::from_le_bytes(word)) {
                i += 8;
                continue;
            }
        }
        let b = bytes[i];
        i += 1;
        if !needs_escape(b) {
            continue;
        }
        out.extend_from_slice(&bytes[start..i - 1]);
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            c => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\u00");
                out.push(HEX[(c >> 4) as usize]);
                out.push(HEX[(c & 15) as usize]);
            }
        }
        start = i;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// True when any byte of `w` needs escaping ([`needs_escape`]): a byte
/// below 0x20, `"` or `\\` (the classic has-less / has-zero word tests; no
/// false negatives, and a false positive only costs a byte-wise look).
const fn word_needs_escape(w: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let control = w.wrapping_sub(ONES * 0x20) & !w & HIGH;
    let q = w ^ (ONES * b'"' as u64);
    let quote = q.wrapping_sub(ONES) & !q & HIGH;
    let bs = w ^ (ONES * b'\\' as u64);
    let backslash = bs.wrapping_sub(ONES) & !bs & HIGH;
    (control | quote | backslash) != 0
}

/// Appends an unsigned integer in decimal.
pub fn json_u64(out: &mut Vec<u8>, mut v: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

/// Appends a signed integer in decimal.
pub fn json_i64(out: &mut Vec<u8>, v: i64) {
    if v < 0 {
        out.push(b'-');
    }
    json_u64(out, v.unsigned_abs());
}

/// Appends a finite f64, or `null` (JSON has no NaN or infinity).
pub fn json_f64(out: &mut Vec<u8>, v: f64) {
    if v.is_finite() {
        let _ = serde_json::to_writer(&mut *out, &v);
    } else {
        out.extend_from_slice(b"null");
    }
}

/// Appends `"key":`.
fn key(out: &mut Vec<u8>, k: &str) {
    json_str(out, k);
    out.push(b':');
}

/// Appends an RFC 3339 timestamp with nanoseconds (`"2023-11-14T22:13:20.123456789Z"`),
/// the same text as `humantime::format_rfc3339_nanos`, without `fmt`.
pub fn json_time(out: &mut Vec<u8>, unix_nanos: u64) {
    let secs = unix_nanos / 1_000_000_000;
    let nanos = (unix_nanos % 1_000_000_000) as u32;
    let days = (secs / 86_400) as i64;
    let sod = (secs % 86_400) as u32;
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = (yoe + era * 400 + i64::from(month <= 2)) as u32;
    let mut b = *b"\"0000-00-00T00:00:00.000000000Z\"";
    let mut put = |at: usize, width: usize, mut v: u32| {
        for i in (at..at + width).rev() {
            b[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(1, 4, year);
    put(6, 2, month);
    put(9, 2, day);
    put(12, 2, sod / 3600);
    put(15, 2, sod / 60 % 60);
    put(18, 2, sod % 60);
    put(21, 9, nanos);
    out.extend_from_slice(&b);
}

/// Appends lowercase hex of `bytes` as a JSON string.
pub fn json_hex(out: &mut Vec<u8>, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    for b in bytes {
        out.push(HEX[(b >> 4) as usize]);
        out.push(HEX[(b & 15) as usize]);
    }
    out.push(b'"');
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    hex_concat(&[bytes])
}

/// Lowercase hex of the parts one after another, in one allocation.
pub fn hex_concat(parts: &[&[u8]]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(parts.iter().map(|p| p.len() * 2).sum());
    for b in parts.iter().flat_map(|p| p.iter()) {
        s.push(HEX[(b >> 4) as usize] as char);
        s.push(HEX[(b & 15) as usize] as char);
    }
    s
}

fn any_value(out: &mut Vec<u8>, v: Option<&AnyValue>) {
    let Some(value) = v.and_then(|v| v.value.as_ref()) else {
        out.extend_from_slice(b"null");
        return;
    };
    match value {
        any_value::Value::StringValue(s) => json_str(out, s),
        any_value::Value::BoolValue(b) => {
            out.extend_from_slice(if *b { b"true" } else { b"false" })
        }
        any_value::Value::IntValue(i) => json_i64(out, *i),
        any_value::Value::DoubleValue(d) => json_f64(out, *d),
        any_value::Value::ArrayValue(a) => {
            out.push(b'[');
            for (i, item) in a.values.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                any_value(out, Some(item));
            }
            out.push(b']');
        }
        any_value::Value::KvlistValue(kv) => attributes(out, &kv.values),
        // Only used by the profiles signal's string table, which is not received here.
        any_value::Value::StringValueStrindex(i) => {
            let _ = write!(out, "{i}");
        }
        any_value::Value::BytesValue(b) => {
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

/// Appends attributes as a JSON object. Duplicate keys (legal in OTLP,
/// rejected by Elasticsearch) keep their first value.
pub fn attributes(out: &mut Vec<u8>, kvs: &[KeyValue]) {
    out.push(b'{');
    let mut first = true;
    for (i, kv) in kvs.iter().enumerate() {
        if kvs[..i].iter().any(|earlier| earlier.key == kv.key) {
            continue;
        }
        if !first {
            out.push(b',');
        }
        first = false;
        key(out, &kv.key);
        any_value(out, kv.value.as_ref());
    }
    out.push(b'}');
}

/// The string value of attribute `name`, if present and a string.
pub fn attr_str<'a>(kvs: &'a [KeyValue], name: &str) -> Option<&'a str> {
    kvs.iter()
        .find(|kv| kv.key == name)
        .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
            any_value::Value::StringValue(s) => Some(s.as_str()),
            _ => None,
        })
}

/// Pre-encoded parts shared by every record of one resource and scope.
#[derive(Debug, Clone, Copy)]
pub struct Shared<'a> {
    /// The `resource` object.
    pub resource: &'a [u8],
    /// The `scope` object.
    pub scope: &'a [u8],
}

/// Encodes the resource object once per resource.
pub fn encode_resource(resource: Option<&Resource>, schema_url: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"{\"attributes\":");
    attributes(
        &mut out,
        resource.map(|r| r.attributes.as_slice()).unwrap_or(&[]),
    );
    if let Some(r) = resource {
        if r.dropped_attributes_count > 0 {
            let _ = write!(
                out,
                ",\"dropped_attributes_count\":{}",
                r.dropped_attributes_count
            );
        }
    }
    if !schema_url.is_empty() {
        out.extend_from_slice(b",\"schema_url\":");
        json_str(&mut out, schema_url);
    }
    out.push(b'}');
    out
}

/// Encodes the scope object once per scope.
pub fn encode_scope(scope: Option<&InstrumentationScope>, schema_url: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.push(b'{');
    let mut sep = "";
    if let Some(s) = scope {
        if !s.name.is_empty() {
            out.extend_from_slice(b"\"name\":");
            json_str(&mut out, &s.name);
            sep = ",";
        }
        if !s.version.is_empty() {
            out.extend_from_slice(sep.as_bytes());
            out.extend_from_slice(b"\"version\":");
            json_str(&mut out, &s.version);
            sep = ",";
        }
        if !s.attributes.is_empty() {
            out.extend_from_slice(sep.as_bytes());
            out.extend_from_slice(b"\"attributes\":");
            attributes(&mut out, &s.attributes);
            sep = ",";
        }
    }
    if !schema_url.is_empty() {
        out.extend_from_slice(sep.as_bytes());
        out.extend_from_slice(b"\"schema_url\":");
        json_str(&mut out, schema_url);
    }
    out.push(b'}');
    out
}

/// `data_stream` fields, so documents carry their stream even when written to plain indices.
#[derive(Debug, Clone)]
pub struct DataStream {
    pub dataset: String,
    pub namespace: String,
}

pub(crate) fn data_stream(out: &mut Vec<u8>, ty: &str, ds: &DataStream) {
    out.extend_from_slice(b"\"data_stream\":{\"type\":");
    json_str(out, ty);
    out.extend_from_slice(b",\"dataset\":");
    json_str(out, &ds.dataset);
    out.extend_from_slice(b",\"namespace\":");
    json_str(out, &ds.namespace);
    out.push(b'}');
}

pub(crate) fn shared_parts(out: &mut Vec<u8>, shared: &Shared<'_>) {
    out.extend_from_slice(b",\"resource\":");
    out.extend_from_slice(shared.resource);
    out.extend_from_slice(b",\"scope\":");
    out.extend_from_slice(shared.scope);
}

/// Span kind as the collector's `otel` mode writes it.
pub fn span_kind_name(kind: i32) -> &'static str {
    match span::SpanKind::try_from(kind) {
        Ok(span::SpanKind::Internal) => "Internal",
        Ok(span::SpanKind::Server) => "Server",
        Ok(span::SpanKind::Client) => "Client",
        Ok(span::SpanKind::Producer) => "Producer",
        Ok(span::SpanKind::Consumer) => "Consumer",
        _ => "Unspecified",
    }
}

/// True when the span's status is ERROR.
pub fn span_is_error(s: &Span) -> bool {
    s.status
        .as_ref()
        .is_some_and(|st| st.code == status::StatusCode::Error as i32)
}

/// Appends one span document.
pub fn encode_span(
    out: &mut Vec<u8>,
    s: &Span,
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
            trace_id: &s.trace_id,
            span_id: &s.span_id,
            parent_span_id: &s.parent_span_id,
            trace_state: s.trace_state.as_bytes(),
            name: s.name.as_bytes(),
            kind: s.kind,
            status: s.status.as_ref().map(|st| (st.code, st.message.as_bytes())),
        },
        ds,
    );
    out.extend_from_slice(b",\"attributes\":");
    attributes(out, &s.attributes);
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
        for (i, e) in s.events.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            span_event(out, e.time_unix_nano, e.name.as_bytes(), |out| {
                attributes(out, &e.attributes)
            });
        }
        out.push(b']');
    }
    if !s.links.is_empty() {
        out.extend_from_slice(b",\"links\":[");
        for (i, l) in s.links.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            span_link(
                out,
                (&l.trace_id, &l.span_id, l.trace_state.as_bytes()),
                |out| attributes(out, &l.attributes),
            );
        }
        out.push(b']');
    }
    shared_parts(out, shared);
    out.push(b',');
    enrich::write_anomaly_json(out, verdict, subject);
    out.push(b'}');
}

/// The scalar fields of a span, borrowed from either decoder (the prost
/// types or `receiver::wire`'s view of the received bytes): both write their
/// documents through [`span_head`], [`dropped_counts`], [`span_event`] and
/// [`span_link`], so the two paths cannot drift apart field by field.
pub struct SpanHead<'a> {
    pub start_time_unix_nano: u64,
    pub end_time_unix_nano: u64,
    pub trace_id: &'a [u8],
    pub span_id: &'a [u8],
    pub parent_span_id: &'a [u8],
    /// UTF-8 (checked by the decoder).
    pub trace_state: &'a [u8],
    /// UTF-8 (checked by the decoder).
    pub name: &'a [u8],
    pub kind: i32,
    /// (code, message), the message UTF-8.
    pub status: Option<(i32, &'a [u8])>,
}

/// Opens a span document and writes its fields up to its attributes.
pub fn span_head(out: &mut Vec<u8>, h: &SpanHead<'_>, ds: &DataStream) {
    out.extend_from_slice(b"{\"@timestamp\":");
    json_time(out, h.start_time_unix_nano);
    out.push(b',');
    data_stream(out, "traces", ds);
    out.extend_from_slice(b",\"trace_id\":");
    json_hex(out, h.trace_id);
    out.extend_from_slice(b",\"span_id\":");
    json_hex(out, h.span_id);
    if !h.parent_span_id.is_empty() {
        out.extend_from_slice(b",\"parent_span_id\":");
        json_hex(out, h.parent_span_id);
    }
    if !h.trace_state.is_empty() {
        out.extend_from_slice(b",\"trace_state\":");
        json_str_bytes(out, h.trace_state);
    }
    out.extend_from_slice(b",\"name\":");
    json_str_bytes(out, h.name);
    out.extend_from_slice(b",\"kind\":");
    json_str(out, span_kind_name(h.kind));
    out.extend_from_slice(b",\"duration\":");
    json_u64(
        out,
        h.end_time_unix_nano.saturating_sub(h.start_time_unix_nano),
    );
    if let Some((code, message)) = h.status {
        let code = match status::StatusCode::try_from(code) {
            Ok(status::StatusCode::Ok) => "Ok",
            Ok(status::StatusCode::Error) => "Error",
            _ => "Unset",
        };
        out.extend_from_slice(b",\"status\":{\"code\":");
        json_str(out, code);
        if !message.is_empty() {
            out.extend_from_slice(b",\"message\":");
            json_str_bytes(out, message);
        }
        out.push(b'}');
    }
}

/// The span's dropped attributes / events / links counts, each only when
/// above zero.
pub fn dropped_counts(out: &mut Vec<u8>, [attributes, events, links]: [u32; 3]) {
    for (name, n) in [
        ("dropped_attributes_count", attributes),
        ("dropped_events_count", events),
        ("dropped_links_count", links),
    ] {
        if n > 0 {
            let _ = write!(out, ",\"{name}\":{n}");
        }
    }
}

/// One object of a span's `events` (the name UTF-8); `attrs` writes its
/// attributes object.
pub fn span_event(out: &mut Vec<u8>, time: u64, name: &[u8], attrs: impl FnOnce(&mut Vec<u8>)) {
    out.extend_from_slice(b"{\"@timestamp\":");
    json_time(out, time);
    out.extend_from_slice(b",\"name\":");
    json_str_bytes(out, name);
    out.extend_from_slice(b",\"attributes\":");
    attrs(out);
    out.push(b'}');
}

/// One object of a span's `links`: (trace id, span id, trace state UTF-8);
/// `attrs` writes its attributes object.
pub fn span_link(
    out: &mut Vec<u8>,
    (trace_id, span_id, trace_state): (&[u8], &[u8], &[u8]),
    attrs: impl FnOnce(&mut Vec<u8>),
) {
    out.extend_from_slice(b"{\"trace_id\":");
    json_hex(out, trace_id);
    out.extend_from_slice(b",\"span_id\":");
    json_hex(out, span_id);
    if !trace_state.is_empty() {
        out.extend_from_slice(b",\"trace_state\":");
        json_str_bytes(out, trace_state);
    }
    out.extend_from_slice(b",\"attributes\":");
    attrs(out);
    out.push(b'}');
}

/// The metric type name written into `metric.type`.
pub fn metric_type_name(m: &Metric) -> &'static str {
    match &m.data {
        Some(metric::Data::Gauge(_)) => "gauge",
        Some(metric::Data::Sum(_)) => "sum",
        Some(metric::Data::Histogram(_)) => "histogram",
        Some(metric::Data::ExponentialHistogram(_)) => "exponential_histogram",
        Some(metric::Data::Summary(_)) => "summary",
        None => "empty",
    }
}

/// One data point, borrowed.
#[derive(Debug, Clone, Copy)]
pub enum PointRef<'a> {
    Number(&'a NumberDataPoint),
    Histogram(&'a HistogramDataPoint),
    ExpHistogram(&'a ExponentialHistogramDataPoint),
    Summary(&'a SummaryDataPoint),
}

impl<'a> PointRef<'a> {
    /// Point attributes.
    pub fn attributes(&self) -> &'a [KeyValue] {
        match self {
            PointRef::Number(p) => &p.attributes,
            PointRef::Histogram(p) => &p.attributes,
            PointRef::ExpHistogram(p) => &p.attributes,
            PointRef::Summary(p) => &p.attributes,
        }
    }

    /// (start, time) in ns.
    pub fn times(&self) -> (u64, u64) {
        match self {
            PointRef::Number(p) => (p.start_time_unix_nano, p.time_unix_nano),
            PointRef::Histogram(p) => (p.start_time_unix_nano, p.time_unix_nano),
            PointRef::ExpHistogram(p) => (p.start_time_unix_nano, p.time_unix_nano),
            PointRef::Summary(p) => (p.start_time_unix_nano, p.time_unix_nano),
        }
    }
}

fn f64_array(out: &mut Vec<u8>, vals: impl Iterator<Item = f64>) {
    out.push(b'[');
    for (i, v) in vals.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        json_f64(out, v);
    }
    out.push(b']');
}

fn u64_array(out: &mut Vec<u8>, vals: &[u64]) {
    out.push(b'[');
    for (i, v) in vals.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let _ = write!(out, "{v}");
    }
    out.push(b']');
}

fn point_value(out: &mut Vec<u8>, p: PointRef<'_>) {
    match p {
        PointRef::Number(p) => match p.value {
            Some(number_data_point::Value::AsDouble(d)) => json_f64(out, d),
            Some(number_data_point::Value::AsInt(i)) => {
                let _ = write!(out, "{i}");
            }
            None => out.extend_from_slice(b"null"),
        },
        PointRef::Histogram(p) => {
            let _ = write!(out, "{{\"count\":{}", p.count);
            if let Some(sum) = p.sum {
                out.extend_from_slice(b",\"sum\":");
                json_f64(out, sum);
            }
            for (name, v) in [("min", p.min), ("max", p.max)] {
                if let Some(v) = v {
                    let _ = write!(out, ",\"{name}\":");
                    json_f64(out, v);
                }
            }
            out.extend_from_slice(b",\"bucket_counts\":");
            u64_array(out, &p.bucket_counts);
            out.extend_from_slice(b",\"explicit_bounds\":");
            f64_array(out, p.explicit_bounds.iter().copied());
            out.push(b'}');
        }
        PointRef::ExpHistogram(p) => {
            let _ = write!(
                out,
                "{{\"count\":{},\"scale\":{},\"zero_count\":{}",
                p.count, p.scale, p.zero_count
            );
            if let Some(sum) = p.sum {
                out.extend_from_slice(b",\"sum\":");
                json_f64(out, sum);
            }
            for (name, v) in [("min", p.min), ("max", p.max)] {
                if let Some(v) = v {
                    let _ = write!(out, ",\"{name}\":");
                    json_f64(out, v);
                }
            }
            for (name, b) in [("positive", &p.positive), ("negative", &p.negative)] {
                if let Some(b) = b {
                    let _ = write!(
                        out,
                        ",\"{name}\":{{\"offset\":{},\"bucket_counts\":",
                        b.offset
                    );
                    u64_array(out, &b.bucket_counts);
                    out.push(b'}');
                }
            }
            out.push(b'}');
        }
        PointRef::Summary(p) => {
            let _ = write!(out, "{{\"count\":{},\"sum\":", p.count);
            json_f64(out, p.sum);
            out.extend_from_slice(b",\"quantiles\":[");
            for (i, q) in p.quantile_values.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(b"{\"quantile\":");
                json_f64(out, q.quantile);
                out.extend_from_slice(b",\"value\":");
                json_f64(out, q.value);
                out.push(b'}');
            }
            out.extend_from_slice(b"]}");
        }
    }
}

/// Appends one metric data point document.
pub fn encode_point(
    out: &mut Vec<u8>,
    m: &Metric,
    p: PointRef<'_>,
    shared: &Shared<'_>,
    ds: &DataStream,
    verdict: Option<&Verdict>,
) {
    let mut attrs = Vec::with_capacity(128);
    attributes(&mut attrs, p.attributes());
    encode_point_with_attributes(out, m, p, &attrs, shared, ds, verdict);
}

/// [`encode_point`] with the point's `attributes` object already written
/// (by [`attributes`]: the scoring worker writes it once for the series key
/// and reuses it here).
pub fn encode_point_with_attributes(
    out: &mut Vec<u8>,
    m: &Metric,
    p: PointRef<'_>,
    attributes_json: &[u8],
    shared: &Shared<'_>,
    ds: &DataStream,
    verdict: Option<&Verdict>,
) {
    let (start, time) = p.times();
    out.extend_from_slice(b"{\"@timestamp\":");
    json_time(out, time);
    if start > 0 {
        out.extend_from_slice(b",\"start_timestamp\":");
        json_time(out, start);
    }
    out.push(b',');
    data_stream(out, "metrics", ds);
    out.extend_from_slice(b",\"metric\":{\"name\":");
    json_str(out, &m.name);
    out.extend_from_slice(b",\"type\":");
    json_str(out, metric_type_name(m));
    if !m.unit.is_empty() {
        out.extend_from_slice(b",\"unit\":");
        json_str(out, &m.unit);
    }
    let temporality = match &m.data {
        Some(metric::Data::Sum(s)) => Some((s.aggregation_temporality, Some(s.is_monotonic))),
        Some(metric::Data::Histogram(h)) => Some((h.aggregation_temporality, None)),
        Some(metric::Data::ExponentialHistogram(h)) => Some((h.aggregation_temporality, None)),
        _ => None,
    };
    if let Some((t, monotonic)) = temporality {
        let name = match t {
            1 => "delta",
            2 => "cumulative",
            _ => "unspecified",
        };
        let _ = write!(out, ",\"temporality\":\"{name}\"");
        if let Some(mono) = monotonic {
            let _ = write!(out, ",\"monotonic\":{mono}");
        }
    }
    out.push(b'}');
    out.extend_from_slice(b",\"metrics\":{");
    key(out, &m.name);
    point_value(out, p);
    out.push(b'}');
    out.extend_from_slice(b",\"attributes\":");
    out.extend_from_slice(attributes_json);
    if let PointRef::Number(np) = p {
        if !np.exemplars.is_empty() {
            out.extend_from_slice(b",\"exemplars\":[");
            for (i, e) in np.exemplars.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(b"{\"@timestamp\":");
                json_time(out, e.time_unix_nano);
                if !e.trace_id.is_empty() {
                    out.extend_from_slice(b",\"trace_id\":");
                    json_hex(out, &e.trace_id);
                    out.extend_from_slice(b",\"span_id\":");
                    json_hex(out, &e.span_id);
                }
                out.extend_from_slice(b",\"value\":");
                match e.value {
                    Some(exemplar::Value::AsDouble(d)) => json_f64(out, d),
                    Some(exemplar::Value::AsInt(i)) => {
                        let _ = write!(out, "{i}");
                    }
                    None => out.extend_from_slice(b"null"),
                }
                out.push(b'}');
            }
            out.push(b']');
        }
    }
    shared_parts(out, shared);
    if let Some(v) = verdict {
        out.push(b',');
        enrich::write_anomaly_json(out, v, &m.name);
    } else {
        out.push(b',');
        enrich::write_not_scored_json(out, NOT_SCORED_POINT);
    }
    out.push(b'}');
}

/// Appends one log record document.
pub fn encode_log(
    out: &mut Vec<u8>,
    r: &LogRecord,
    time_ns: u64,
    shared: &Shared<'_>,
    ds: &DataStream,
    verdict: &Verdict,
    subject: &str,
) {
    out.extend_from_slice(b"{\"@timestamp\":");
    json_time(out, time_ns);
    if r.observed_time_unix_nano > 0 {
        out.extend_from_slice(b",\"observed_timestamp\":");
        json_time(out, r.observed_time_unix_nano);
    }
    out.push(b',');
    data_stream(out, "logs", ds);
    if !r.severity_text.is_empty() {
        out.extend_from_slice(b",\"severity_text\":");
        json_str(out, &r.severity_text);
    }
    let _ = write!(out, ",\"severity_number\":{}", r.severity_number);
    if let Some(body) = &r.body {
        match &body.value {
            Some(any_value::Value::StringValue(s)) => {
                out.extend_from_slice(b",\"body\":{\"text\":");
                json_str(out, s);
                out.push(b'}');
            }
            Some(_) => {
                out.extend_from_slice(b",\"body\":{\"structured\":");
                any_value(out, Some(body));
                out.push(b'}');
            }
            None => {}
        }
    }
    if !r.event_name.is_empty() {
        out.extend_from_slice(b",\"event_name\":");
        json_str(out, &r.event_name);
    }
    out.extend_from_slice(b",\"attributes\":");
    attributes(out, &r.attributes);
    if r.dropped_attributes_count > 0 {
        let _ = write!(
            out,
            ",\"dropped_attributes_count\":{}",
            r.dropped_attributes_count
        );
    }
    if !r.trace_id.is_empty() {
        out.extend_from_slice(b",\"trace_id\":");
        json_hex(out, &r.trace_id);
    }
    if !r.span_id.is_empty() {
        out.extend_from_slice(b",\"span_id\":");
        json_hex(out, &r.span_id);
    }
    shared_parts(out, shared);
    out.push(b',');
    enrich::write_anomaly_json(out, verdict, subject);
    out.push(b'}');
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::{Duration, UNIX_EPOCH};

    proptest! {
        #[test]
        fn json_str_matches_serde_json(s in "\\PC*|[\\x00-\\x7f]*") {
            let mut ours = Vec::new();
            json_str(&mut ours, &s);
            prop_assert_eq!(String::from_utf8(ours).unwrap(), serde_json::to_string(&s).unwrap());
        }

        #[test]
        fn json_time_matches_humantime(ns in 0u64..=u64::MAX) {
            let mut ours = Vec::new();
            json_time(&mut ours, ns);
            let expected = format!("\"{}\"", humantime::format_rfc3339_nanos(UNIX_EPOCH + Duration::from_nanos(ns)));
            prop_assert_eq!(String::from_utf8(ours).unwrap(), expected);
        }

        #[test]
        fn integers_match_display(v in any::<i64>(), u in any::<u64>()) {
            let mut out = Vec::new();
            json_i64(&mut out, v);
            out.push(b' ');
            json_u64(&mut out, u);
            prop_assert_eq!(String::from_utf8(out).unwrap(), format!("{v} {u}"));
        }
    }

    #[test]
    fn json_time_edges() {
        for ns in [
            0,
            1,
            951_782_400_000_000_000,
            1_709_164_800_999_999_999,
            4_102_444_800_000_000_000,
        ] {
            let mut ours = Vec::new();
            json_time(&mut ours, ns);
            let expected = format!(
                "\"{}\"",
                humantime::format_rfc3339_nanos(UNIX_EPOCH + Duration::from_nanos(ns))
            );
            assert_eq!(String::from_utf8(ours).unwrap(), expected);
        }
    }
    use crate::detect::{Explanation, Verdict};
    use opentelemetry_proto::tonic::common::v1::{ArrayValue, KeyValueList};
    use opentelemetry_proto::tonic::trace::v1::Status;

    fn kv(k: &str, v: any_value::Value) -> KeyValue {
        KeyValue {
            key: k.into(),
            value: Some(AnyValue { value: Some(v) }),
            ..Default::default()
        }
    }

    #[test]
    fn span_document_is_valid_json_with_otel_layout() {
        let span = Span {
            trace_id: vec![1; 16],
            span_id: vec![2; 8],
            name: "GET /cart \"quoted\"".into(),
            kind: 2,
            start_time_unix_nano: 1_700_000_000_123_456_789,
            end_time_unix_nano: 1_700_000_000_223_456_789,
            attributes: vec![
                kv("http.method", any_value::Value::StringValue("GET".into())),
                kv("http.method", any_value::Value::StringValue("dup".into())),
                kv("n", any_value::Value::IntValue(-5)),
                kv("f", any_value::Value::DoubleValue(f64::NAN)),
                kv(
                    "arr",
                    any_value::Value::ArrayValue(ArrayValue {
                        values: vec![AnyValue {
                            value: Some(any_value::Value::BoolValue(true)),
                        }],
                    }),
                ),
                kv(
                    "kv",
                    any_value::Value::KvlistValue(KeyValueList {
                        values: vec![kv("a", any_value::Value::BytesValue(vec![0, 255]))],
                    }),
                ),
            ],
            status: Some(Status {
                code: 2,
                message: "boom".into(),
            }),
            ..Default::default()
        };
        let res = Resource {
            attributes: vec![kv(
                "service.name",
                any_value::Value::StringValue("cart".into()),
            )],
            ..Default::default()
        };
        let (r, sc) = (encode_resource(Some(&res), ""), encode_scope(None, ""));
        let shared = Shared {
            resource: &r,
            scope: &sc,
        };
        let ds = DataStream {
            dataset: "otel".into(),
            namespace: "prod".into(),
        };
        let v = Verdict::scored(
            80.0,
            Explanation::Latency {
                observed_ms: 100.0,
                quantile: "p99.9",
                baseline_ms: 10.0,
                half_life_s: 600,
            },
        );
        let mut out = Vec::new();
        encode_span(&mut out, &span, &shared, &ds, &v, "GET /cart");
        let doc: serde_json::Value = serde_json::from_slice(&out).expect("valid JSON");
        assert_eq!(doc["@timestamp"], "2023-11-14T22:13:20.123456789Z");
        assert_eq!(doc["trace_id"], "01010101010101010101010101010101");
        assert_eq!(doc["span_id"], "0202020202020202");
        assert_eq!(doc["kind"], "Server");
        assert_eq!(doc["duration"], 100_000_000);
        assert_eq!(doc["status"]["code"], "Error");
        assert_eq!(doc["attributes"]["http.method"], "GET");
        assert_eq!(doc["attributes"]["f"], serde_json::Value::Null);
        assert_eq!(doc["attributes"]["kv"]["a"], "AP8=");
        assert_eq!(doc["resource"]["attributes"]["service.name"], "cart");
        assert_eq!(doc["data_stream"]["namespace"], "prod");
        assert_eq!(doc["anomaly"]["score"], 80.0);
        assert_eq!(doc["anomaly"]["severity"], "critical");
        assert!(doc["anomaly"]["explanation"]
            .as_str()
            .unwrap()
            .contains("10.0×"));
    }

    #[test]
    fn histogram_point_document() {
        let m = Metric {
            name: "http.server.duration".into(),
            unit: "ms".into(),
            data: Some(metric::Data::Histogram(
                opentelemetry_proto::tonic::metrics::v1::Histogram {
                    data_points: vec![],
                    aggregation_temporality: 2,
                },
            )),
            ..Default::default()
        };
        let p = HistogramDataPoint {
            time_unix_nano: 1,
            count: 3,
            sum: Some(6.0),
            bucket_counts: vec![1, 2],
            explicit_bounds: vec![5.0],
            ..Default::default()
        };
        let mut out = Vec::new();
        let (r, sc) = (encode_resource(None, ""), encode_scope(None, ""));
        let shared = Shared {
            resource: &r,
            scope: &sc,
        };
        let ds = DataStream {
            dataset: "otel".into(),
            namespace: "dev".into(),
        };
        encode_point(&mut out, &m, PointRef::Histogram(&p), &shared, &ds, None);
        let doc: serde_json::Value = serde_json::from_slice(&out).expect("valid JSON");
        assert_eq!(doc["metrics"]["http.server.duration"]["count"], 3);
        assert_eq!(doc["metric"]["temporality"], "cumulative");
        assert_eq!(doc["anomaly"]["severity"], "normal");
    }
}
