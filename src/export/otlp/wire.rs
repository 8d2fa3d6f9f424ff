//! Wire-level enrichment of OTLP protobuf requests.
//!
//! prost drops fields it does not know when it decodes, so re-encoding a
//! decoded request would lose what a newer sender put there. Instead the
//! request's own bytes are copied field by field, and only the messages on
//! the path to a record (resource → scope → span / data point / log record)
//! are rewritten: the added attributes are appended at the end of each
//! record (appending entries of a repeated field is valid protobuf) and the
//! enclosing length prefixes are recomputed. Everything else — resource,
//! scope, attributes, links, events, exemplars, unknown fields, even
//! non-canonical tag varints — is copied byte for byte.

use opentelemetry_proto::tonic::common::v1::KeyValue;

use crate::telemetry::Signal;

/// Why a request could not be enriched at the wire level.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("truncated protobuf at byte {0}")]
    Truncated(usize),
    #[error("malformed varint at byte {0}")]
    Varint(usize),
    #[error("invalid field number 0 at byte {0}")]
    FieldZero(usize),
    #[error("unexpected wire type {wire_type} at byte {at}")]
    WireType { wire_type: u8, at: usize },
    #[error("groups nested deeper than {0}")]
    TooDeep(usize),
    #[error("request holds {found} records on the wire, {expected} were scored")]
    Count { expected: usize, found: usize },
}

/// Where the walker is in an OTLP export request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    TracesRequest,
    ResourceSpans,
    ScopeSpans,
    Span,
    MetricsRequest,
    ResourceMetrics,
    ScopeMetrics,
    Metric,
    /// `Gauge` or `Sum`: their points are `NumberDataPoint`s.
    NumberPoints,
    HistogramPoints,
    ExpHistogramPoints,
    SummaryPoints,
    NumberPoint,
    HistogramPoint,
    ExpHistogramPoint,
    SummaryPoint,
    LogsRequest,
    ResourceLogs,
    ScopeLogs,
    LogRecord,
}

impl Level {
    /// The request level of a signal.
    pub fn root(signal: Signal) -> Level {
        match signal {
            Signal::traces => Level::TracesRequest,
            Signal::metrics => Level::MetricsRequest,
            Signal::logs => Level::LogsRequest,
        }
    }

    /// The level a length-delimited field of this message leads to, when
    /// it is on the path to a record.
    pub fn child(self, field: u32) -> Option<Level> {
        use Level::*;
        Some(match (self, field) {
            (TracesRequest, 1) => ResourceSpans,
            (ResourceSpans, 2) => ScopeSpans,
            (ScopeSpans, 2) => Span,
            (MetricsRequest, 1) => ResourceMetrics,
            (ResourceMetrics, 2) => ScopeMetrics,
            (ScopeMetrics, 2) => Metric,
            (Metric, 5) | (Metric, 7) => NumberPoints,
            (Metric, 9) => HistogramPoints,
            (Metric, 10) => ExpHistogramPoints,
            (Metric, 11) => SummaryPoints,
            (NumberPoints, 1) => NumberPoint,
            (HistogramPoints, 1) => HistogramPoint,
            (ExpHistogramPoints, 1) => ExpHistogramPoint,
            (SummaryPoints, 1) => SummaryPoint,
            (LogsRequest, 1) => ResourceLogs,
            (ResourceLogs, 2) => ScopeLogs,
            (ScopeLogs, 2) => LogRecord,
            _ => return None,
        })
    }

    /// The field number of `attributes` when this level is a record.
    pub fn attributes_field(self) -> Option<u32> {
        use Level::*;
        match self {
            Span => Some(9),
            NumberPoint => Some(7),
            HistogramPoint => Some(9),
            ExpHistogramPoint => Some(1),
            SummaryPoint => Some(7),
            LogRecord => Some(6),
            _ => None,
        }
    }
}

/// Deepest group nesting accepted in unknown fields (a guard against stack exhaustion).
const MAX_GROUP_DEPTH: usize = 64;

/// Reads a varint at `*pos`.
pub fn read_varint(buf: &[u8], pos: &mut usize) -> Result<u64, WireError> {
    let start = *pos;
    let mut v: u64 = 0;
    for i in 0..10 {
        let Some(&b) = buf.get(*pos) else {
            return Err(WireError::Truncated(*pos));
        };
        *pos += 1;
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(WireError::Varint(start))
}

/// Appends `v` as a varint.
pub fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn advance(buf: &[u8], pos: &mut usize, n: usize) -> Result<(), WireError> {
    let end = pos.checked_add(n).ok_or(WireError::Truncated(*pos))?;
    if end > buf.len() {
        return Err(WireError::Truncated(*pos));
    }
    *pos = end;
    Ok(())
}

/// Skips the value of a field whose key was just read; for a group, up to and
/// including its end tag.
fn skip_value(
    buf: &[u8],
    pos: &mut usize,
    field: u32,
    wire_type: u8,
    depth: usize,
) -> Result<(), WireError> {
    let at = *pos;
    match wire_type {
        0 => read_varint(buf, pos).map(|_| ()),
        1 => advance(buf, pos, 8),
        2 => {
            let len = read_varint(buf, pos)?;
            advance(
                buf,
                pos,
                usize::try_from(len).map_err(|_| WireError::Truncated(at))?,
            )
        }
        3 => {
            if depth >= MAX_GROUP_DEPTH {
                return Err(WireError::TooDeep(MAX_GROUP_DEPTH));
            }
            loop {
                let key_at = *pos;
                let key = read_varint(buf, pos)?;
                let (f, wt) = split_key(key, key_at)?;
                if wt == 4 {
                    if f == field {
                        return Ok(());
                    }
                    return Err(WireError::WireType {
                        wire_type: 4,
                        at: key_at,
                    });
                }
                skip_value(buf, pos, f, wt, depth + 1)?;
            }
        }
        5 => advance(buf, pos, 4),
        other => Err(WireError::WireType {
            wire_type: other,
            at,
        }),
    }
}

fn split_key(key: u64, at: usize) -> Result<(u32, u8), WireError> {
    let field = u32::try_from(key >> 3).map_err(|_| WireError::Varint(at))?;
    if field == 0 {
        return Err(WireError::FieldZero(at));
    }
    Ok((field, (key & 7) as u8))
}

/// Called at the end of each rewritten message with its level and the output buffer.
pub type AtEnd<'a> = dyn FnMut(Level, &mut Vec<u8>) -> Result<(), WireError> + 'a;

/// Copies the message `buf` at `level` into `out`, rewriting the messages on
/// the path to records, and calls `at_end` at the end of each of those
/// messages (with the level, and the buffer to append to).
pub fn rewrite(
    buf: &[u8],
    level: Level,
    out: &mut Vec<u8>,
    at_end: &mut AtEnd<'_>,
) -> Result<(), WireError> {
    let mut pos = 0;
    while pos < buf.len() {
        let start = pos;
        let key = read_varint(buf, &mut pos)?;
        let (field, wire_type) = split_key(key, start)?;
        let child = match wire_type {
            2 => level.child(field),
            _ => None,
        };
        match child {
            Some(child) => {
                let tag_end = pos;
                let len = read_varint(buf, &mut pos)?;
                let body_start = pos;
                advance(
                    buf,
                    &mut pos,
                    usize::try_from(len).map_err(|_| WireError::Truncated(start))?,
                )?;
                let mut inner = Vec::with_capacity(pos - body_start + 64);
                rewrite(&buf[body_start..pos], child, &mut inner, at_end)?;
                out.extend_from_slice(&buf[start..tag_end]);
                put_varint(out, inner.len() as u64);
                out.extend_from_slice(&inner);
            }
            None => {
                skip_value(buf, &mut pos, field, wire_type, 0)?;
                out.extend_from_slice(&buf[start..pos]);
            }
        }
    }
    at_end(level, out)
}

/// Appends `attrs` as entries of the repeated message field `field`.
pub fn put_attributes(out: &mut Vec<u8>, field: u32, attrs: &[KeyValue]) {
    for kv in attrs {
        prost::encoding::message::encode(field, kv, out);
    }
}

/// Counts the records of a request on the wire (the messages `enrich`
/// would append to), checking the same structure without copying.
pub fn count_records(signal: Signal, buf: &[u8]) -> Result<usize, WireError> {
    fn count(buf: &[u8], level: Level) -> Result<usize, WireError> {
        let mut n = usize::from(level.attributes_field().is_some());
        let mut pos = 0;
        while pos < buf.len() {
            let start = pos;
            let key = read_varint(buf, &mut pos)?;
            let (field, wire_type) = split_key(key, start)?;
            match (wire_type, level.child(field)) {
                (2, Some(child)) => {
                    let len = read_varint(buf, &mut pos)?;
                    let body = pos;
                    advance(
                        buf,
                        &mut pos,
                        usize::try_from(len).map_err(|_| WireError::Truncated(start))?,
                    )?;
                    n += count(&buf[body..pos], child)?;
                }
                _ => skip_value(buf, &mut pos, field, wire_type, 0)?,
            }
        }
        Ok(n)
    }
    count(buf, Level::root(signal))
}

/// Appends `adds[i]` to the attributes of the request's `i`-th record (in
/// wire order, which is the order prost decodes them in). The number of
/// records on the wire must equal `adds.len()`.
pub fn enrich(signal: Signal, buf: &[u8], adds: &[Vec<KeyValue>]) -> Result<Vec<u8>, WireError> {
    let extra: usize = adds.iter().map(|a| a.len() * 96).sum();
    let mut out = Vec::with_capacity(buf.len() + extra);
    let mut next = 0usize;
    rewrite(buf, Level::root(signal), &mut out, &mut |level, out| {
        let Some(field) = level.attributes_field() else {
            return Ok(());
        };
        if let Some(attrs) = adds.get(next) {
            put_attributes(out, field, attrs);
        }
        next += 1;
        Ok(())
    })?;
    if next != adds.len() {
        return Err(WireError::Count {
            expected: adds.len(),
            found: next,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
    use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value::Value as AV;
    use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope};
    use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
    use opentelemetry_proto::tonic::metrics::v1::{
        exponential_histogram_data_point::Buckets, metric::Data, number_data_point,
        summary_data_point::ValueAtQuantile, Exemplar, ExponentialHistogram,
        ExponentialHistogramDataPoint, Gauge, Histogram, HistogramDataPoint, Metric,
        NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum, Summary, SummaryDataPoint,
    };
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{span, ResourceSpans, ScopeSpans, Span};
    use proptest::prelude::*;
    use prost::Message;

    fn kv(k: &str, v: AV) -> KeyValue {
        KeyValue {
            key: k.into(),
            value: Some(AnyValue { value: Some(v) }),
            ..Default::default()
        }
    }

    /// An unknown field (number 9000 + n) in one of the four wire types.
    fn unknown_field(n: u32, kind: u8, payload: &[u8]) -> Vec<u8> {
        let field = 9000 + n;
        let mut out = Vec::new();
        match kind % 4 {
            0 => {
                put_varint(&mut out, u64::from(field << 3));
                put_varint(&mut out, payload.len() as u64 * 1000 + 7);
            }
            1 => {
                put_varint(&mut out, u64::from(field << 3 | 1));
                out.extend_from_slice(&[payload.first().copied().unwrap_or(1); 8]);
            }
            2 => {
                put_varint(&mut out, u64::from(field << 3 | 2));
                put_varint(&mut out, payload.len() as u64);
                out.extend_from_slice(payload);
            }
            _ => {
                put_varint(&mut out, u64::from(field << 3 | 5));
                out.extend_from_slice(&[7, 7, 7, payload.len() as u8]);
            }
        }
        out
    }

    /// Appends an unknown field at the end of every message on the record path.
    fn inject_unknown(signal: Signal, buf: &[u8], kind: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut n = 0;
        rewrite(buf, Level::root(signal), &mut out, &mut |_, out| {
            n += 1;
            out.extend_from_slice(&unknown_field(n, kind.wrapping_add(n as u8), payload));
            Ok(())
        })
        .unwrap();
        out
    }

    /// Every field numbered 9000 and above on the record path, as (level, raw bytes), in order.
    fn collect_unknown(signal: Signal, buf: &[u8]) -> Vec<(Level, Vec<u8>)> {
        fn walk(buf: &[u8], level: Level, found: &mut Vec<(Level, Vec<u8>)>) {
            let mut pos = 0;
            while pos < buf.len() {
                let start = pos;
                let key = read_varint(buf, &mut pos).unwrap();
                let (field, wt) = split_key(key, start).unwrap();
                if wt == 2 {
                    if let Some(child) = level.child(field) {
                        let len = read_varint(buf, &mut pos).unwrap() as usize;
                        walk(&buf[pos..pos + len], child, found);
                        pos += len;
                        continue;
                    }
                }
                skip_value(buf, &mut pos, field, wt, 0).unwrap();
                if field >= 9000 {
                    found.push((level, buf[start..pos].to_vec()));
                }
            }
        }
        let mut found = Vec::new();
        walk(buf, Level::root(signal), &mut found);
        found
    }

    fn adds_for(n: usize, salt: u32) -> Vec<Vec<KeyValue>> {
        (0..n)
            .map(|i| {
                if (i as u32 + salt) % 5 == 4 {
                    // A record with nothing added (a metric point still learning).
                    return Vec::new();
                }
                vec![
                    kv("anomaly.score", AV::DoubleValue(i as f64 * 1.5)),
                    kv("anomaly.severity", AV::StringValue(format!("sev{i}"))),
                    kv("anomaly.explanation", AV::StringValue("p99 7.2×".into())),
                ]
            })
            .collect()
    }

    // ---- generators -------------------------------------------------------

    fn any_attr() -> impl Strategy<Value = KeyValue> {
        (
            "[a-z.]{1,8}",
            prop_oneof![
                any::<i64>().prop_map(AV::IntValue),
                "[ -~]{0,12}".prop_map(AV::StringValue),
                any::<bool>().prop_map(AV::BoolValue),
                (-1e9f64..1e9).prop_map(AV::DoubleValue),
                proptest::collection::vec(any::<u8>(), 0..6).prop_map(AV::BytesValue),
            ],
        )
            .prop_map(|(k, v)| kv(&k, v))
    }

    fn attrs() -> impl Strategy<Value = Vec<KeyValue>> {
        proptest::collection::vec(any_attr(), 0..3)
    }

    fn resource() -> impl Strategy<Value = Option<Resource>> {
        proptest::option::of((attrs(), 0u32..3).prop_map(|(attributes, d)| Resource {
            attributes,
            dropped_attributes_count: d,
            entity_refs: Vec::new(),
        }))
    }

    fn scope() -> impl Strategy<Value = Option<InstrumentationScope>> {
        proptest::option::of(("[a-z]{0,6}", "[0-9.]{0,4}", attrs()).prop_map(
            |(name, version, attributes)| InstrumentationScope {
                name,
                version,
                attributes,
                dropped_attributes_count: 0,
            },
        ))
    }

    fn span() -> impl Strategy<Value = Span> {
        (
            proptest::collection::vec(any::<u8>(), 16),
            proptest::collection::vec(any::<u8>(), 8),
            "[a-zA-Z /]{0,10}",
            0i32..6,
            any::<u64>(),
            attrs(),
            proptest::collection::vec(("[a-z]{1,5}", attrs()), 0..2),
            proptest::collection::vec(attrs(), 0..2),
            0i32..3,
        )
            .prop_map(
                |(trace_id, span_id, name, kind, start, attributes, events, links, code)| Span {
                    trace_id: trace_id.clone(),
                    span_id: span_id.clone(),
                    name,
                    kind,
                    start_time_unix_nano: start / 2,
                    end_time_unix_nano: start / 2 + 1000,
                    attributes,
                    events: events
                        .into_iter()
                        .map(|(name, attributes)| span::Event {
                            time_unix_nano: 5,
                            name,
                            attributes,
                            dropped_attributes_count: 1,
                        })
                        .collect(),
                    links: links
                        .into_iter()
                        .map(|attributes| span::Link {
                            trace_id: trace_id.clone(),
                            span_id: span_id.clone(),
                            attributes,
                            ..Default::default()
                        })
                        .collect(),
                    status: Some(opentelemetry_proto::tonic::trace::v1::Status {
                        message: String::new(),
                        code,
                    }),
                    ..Default::default()
                },
            )
    }

    fn traces() -> impl Strategy<Value = ExportTraceServiceRequest> {
        proptest::collection::vec(
            (
                resource(),
                proptest::collection::vec((scope(), proptest::collection::vec(span(), 0..4)), 0..3),
            ),
            0..3,
        )
        .prop_map(|rs| ExportTraceServiceRequest {
            resource_spans: rs
                .into_iter()
                .map(|(resource, ss)| ResourceSpans {
                    resource,
                    scope_spans: ss
                        .into_iter()
                        .map(|(scope, spans)| ScopeSpans {
                            scope,
                            spans,
                            schema_url: "s".into(),
                        })
                        .collect(),
                    schema_url: String::new(),
                })
                .collect(),
        })
    }

    fn exemplars() -> impl Strategy<Value = Vec<Exemplar>> {
        proptest::collection::vec(
            (attrs(), any::<i64>()).prop_map(|(filtered_attributes, v)| Exemplar {
                filtered_attributes,
                time_unix_nano: 9,
                value: Some(opentelemetry_proto::tonic::metrics::v1::exemplar::Value::AsInt(v)),
                span_id: vec![1; 8],
                trace_id: vec![2; 16],
            }),
            0..2,
        )
    }

    fn number_points() -> impl Strategy<Value = Vec<NumberDataPoint>> {
        proptest::collection::vec(
            (attrs(), any::<f64>(), exemplars()).prop_map(|(attributes, v, exemplars)| {
                NumberDataPoint {
                    attributes,
                    start_time_unix_nano: 1,
                    time_unix_nano: 2,
                    exemplars,
                    flags: 0,
                    value: Some(number_data_point::Value::AsDouble(v)),
                }
            }),
            0..3,
        )
    }

    fn metric() -> impl Strategy<Value = Metric> {
        let data = prop_oneof![
            number_points().prop_map(|data_points| Data::Gauge(Gauge { data_points })),
            number_points().prop_map(|data_points| Data::Sum(Sum {
                data_points,
                aggregation_temporality: 2,
                is_monotonic: true,
            })),
            proptest::collection::vec(
                (attrs(), exemplars()).prop_map(|(attributes, exemplars)| HistogramDataPoint {
                    attributes,
                    time_unix_nano: 3,
                    count: 4,
                    sum: Some(2.5),
                    bucket_counts: vec![1, 3],
                    explicit_bounds: vec![1.0],
                    exemplars,
                    ..Default::default()
                }),
                0..3
            )
            .prop_map(|data_points| Data::Histogram(Histogram {
                data_points,
                aggregation_temporality: 1,
            })),
            proptest::collection::vec(
                attrs().prop_map(|attributes| ExponentialHistogramDataPoint {
                    attributes,
                    time_unix_nano: 3,
                    count: 2,
                    scale: 3,
                    positive: Some(Buckets {
                        offset: -2,
                        bucket_counts: vec![1, 1],
                    }),
                    ..Default::default()
                }),
                0..3
            )
            .prop_map(
                |data_points| Data::ExponentialHistogram(ExponentialHistogram {
                    data_points,
                    aggregation_temporality: 2,
                })
            ),
            proptest::collection::vec(
                attrs().prop_map(|attributes| SummaryDataPoint {
                    attributes,
                    time_unix_nano: 3,
                    count: 2,
                    sum: 1.0,
                    quantile_values: vec![ValueAtQuantile {
                        quantile: 0.5,
                        value: 0.4,
                    }],
                    ..Default::default()
                }),
                0..3
            )
            .prop_map(|data_points| Data::Summary(Summary { data_points })),
        ];
        ("[a-z.]{1,8}", proptest::option::of(data), attrs()).prop_map(|(name, data, metadata)| {
            Metric {
                name,
                description: "d".into(),
                unit: "ms".into(),
                metadata,
                data,
            }
        })
    }

    fn metrics() -> impl Strategy<Value = ExportMetricsServiceRequest> {
        proptest::collection::vec(
            (
                resource(),
                proptest::collection::vec(
                    (scope(), proptest::collection::vec(metric(), 0..3)),
                    0..3,
                ),
            ),
            0..3,
        )
        .prop_map(|rm| ExportMetricsServiceRequest {
            resource_metrics: rm
                .into_iter()
                .map(|(resource, sm)| ResourceMetrics {
                    resource,
                    scope_metrics: sm
                        .into_iter()
                        .map(|(scope, metrics)| ScopeMetrics {
                            scope,
                            metrics,
                            schema_url: String::new(),
                        })
                        .collect(),
                    schema_url: "r".into(),
                })
                .collect(),
        })
    }

    fn logs() -> impl Strategy<Value = ExportLogsServiceRequest> {
        let record =
            (attrs(), 0i32..24, "[ -~]{0,16}").prop_map(|(attributes, sev, body)| LogRecord {
                time_unix_nano: 11,
                observed_time_unix_nano: 12,
                severity_number: sev,
                severity_text: "X".into(),
                body: Some(AnyValue {
                    value: Some(AV::StringValue(body)),
                }),
                attributes,
                trace_id: vec![3; 16],
                ..Default::default()
            });
        proptest::collection::vec(
            (
                resource(),
                proptest::collection::vec((scope(), proptest::collection::vec(record, 0..4)), 0..3),
            ),
            0..3,
        )
        .prop_map(|rl| ExportLogsServiceRequest {
            resource_logs: rl
                .into_iter()
                .map(|(resource, sl)| ResourceLogs {
                    resource,
                    scope_logs: sl
                        .into_iter()
                        .map(|(scope, log_records)| ScopeLogs {
                            scope,
                            log_records,
                            schema_url: String::new(),
                        })
                        .collect(),
                    schema_url: String::new(),
                })
                .collect(),
        })
    }

    // ---- the expected result, built on decoded structs ---------------------

    fn expected_traces(
        mut r: ExportTraceServiceRequest,
        adds: &[Vec<KeyValue>],
    ) -> ExportTraceServiceRequest {
        let mut it = adds.iter();
        for s in r
            .resource_spans
            .iter_mut()
            .flat_map(|r| &mut r.scope_spans)
            .flat_map(|s| &mut s.spans)
        {
            s.attributes.extend(it.next().unwrap().iter().cloned());
        }
        r
    }

    fn expected_metrics(
        mut r: ExportMetricsServiceRequest,
        adds: &[Vec<KeyValue>],
    ) -> ExportMetricsServiceRequest {
        let mut it = adds.iter();
        for m in r
            .resource_metrics
            .iter_mut()
            .flat_map(|r| &mut r.scope_metrics)
            .flat_map(|s| &mut s.metrics)
        {
            macro_rules! add {
                ($points:expr) => {
                    for p in $points.iter_mut() {
                        p.attributes.extend(it.next().unwrap().iter().cloned());
                    }
                };
            }
            match &mut m.data {
                Some(Data::Gauge(g)) => add!(g.data_points),
                Some(Data::Sum(g)) => add!(g.data_points),
                Some(Data::Histogram(g)) => add!(g.data_points),
                Some(Data::ExponentialHistogram(g)) => add!(g.data_points),
                Some(Data::Summary(g)) => add!(g.data_points),
                None => {}
            }
        }
        r
    }

    fn expected_logs(
        mut r: ExportLogsServiceRequest,
        adds: &[Vec<KeyValue>],
    ) -> ExportLogsServiceRequest {
        let mut it = adds.iter();
        for l in r
            .resource_logs
            .iter_mut()
            .flat_map(|r| &mut r.scope_logs)
            .flat_map(|s| &mut s.log_records)
        {
            l.attributes.extend(it.next().unwrap().iter().cloned());
        }
        r
    }

    /// decode → enrich → decode equals the input plus the added attributes,
    /// and every unknown field survives in place, byte for byte.
    fn round_trip<M: Message + Default + PartialEq + std::fmt::Debug>(
        signal: Signal,
        input: &M,
        kind: u8,
        payload: &[u8],
        salt: u32,
        expected: impl Fn(M, &[Vec<KeyValue>]) -> M,
    ) -> Result<(), TestCaseError> {
        let wire = inject_unknown(signal, &input.encode_to_vec(), kind, payload);
        // What the sidecar sees: prost decodes the request (dropping the unknown fields).
        let decoded = M::decode(&wire[..]).unwrap();
        prop_assert_eq!(&decoded, input);
        let n = count_records(signal, &wire).unwrap();
        let adds = adds_for(n, salt);
        let enriched = enrich(signal, &wire, &adds).unwrap();
        let back = M::decode(&enriched[..]).unwrap();
        prop_assert_eq!(back, expected(decoded, &adds));
        let before = collect_unknown(signal, &wire);
        prop_assert!(!before.is_empty());
        prop_assert_eq!(collect_unknown(signal, &enriched), before);
        // With nothing to add, the bytes are the same bytes.
        let empty = vec![Vec::new(); n];
        prop_assert_eq!(enrich(signal, &wire, &empty).unwrap(), wire);
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn traces_round_trip(r in traces(), kind in any::<u8>(), payload in proptest::collection::vec(any::<u8>(), 0..20), salt in 0u32..5) {
            round_trip(Signal::traces, &r, kind, &payload, salt, expected_traces)?;
        }

        #[test]
        fn metrics_round_trip(r in metrics(), kind in any::<u8>(), payload in proptest::collection::vec(any::<u8>(), 0..20), salt in 0u32..5) {
            round_trip(Signal::metrics, &r, kind, &payload, salt, expected_metrics)?;
        }

        #[test]
        fn logs_round_trip(r in logs(), kind in any::<u8>(), payload in proptest::collection::vec(any::<u8>(), 0..20), salt in 0u32..5) {
            round_trip(Signal::logs, &r, kind, &payload, salt, expected_logs)?;
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            for signal in [Signal::traces, Signal::metrics, Signal::logs] {
                if let Ok(n) = count_records(signal, &bytes) {
                    prop_assert!(enrich(signal, &bytes, &adds_for(n, 0)).is_ok());
                }
            }
        }
    }

    proptest! {
        #[test]
        fn count_agrees_with_the_rewrite(r in metrics(), bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            for buf in [r.encode_to_vec(), bytes] {
                let mut n = 0;
                let walked = rewrite(&buf, Level::MetricsRequest, &mut Vec::new(), &mut |l, _| {
                    n += usize::from(l.attributes_field().is_some());
                    Ok(())
                });
                prop_assert_eq!(count_records(Signal::metrics, &buf), walked.map(|_| n));
            }
        }
    }

    #[test]
    fn a_wrong_record_count_is_an_error() {
        let r = ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                scope_logs: vec![ScopeLogs {
                    log_records: vec![LogRecord::default(), LogRecord::default()],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let wire = r.encode_to_vec();
        assert_eq!(
            enrich(Signal::logs, &wire, &adds_for(3, 0)),
            Err(WireError::Count {
                expected: 3,
                found: 2
            })
        );
        assert!(enrich(Signal::logs, &wire[..wire.len() - 1], &adds_for(2, 0)).is_err());
    }

    #[test]
    fn unknown_groups_are_copied() {
        // A group (field 9100, wire types 3/4) holding a varint, at the end of a span.
        let r = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans: vec![Span::default()],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let mut n = 0;
        let mut wire = Vec::new();
        rewrite(
            &r.encode_to_vec(),
            Level::TracesRequest,
            &mut wire,
            &mut |l, out| {
                if l == Level::Span {
                    n += 1;
                    put_varint(out, 9100 << 3 | 3);
                    put_varint(out, 1 << 3);
                    put_varint(out, 42);
                    put_varint(out, 9100 << 3 | 4);
                }
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(n, 1);
        let out = enrich(Signal::traces, &wire, &adds_for(1, 0)).unwrap();
        let mut group = Vec::new();
        for v in [9100 << 3 | 3, 1 << 3, 42, 9100 << 3 | 4] {
            put_varint(&mut group, v);
        }
        assert_eq!(group, [0xe3, 0xb8, 0x04, 0x08, 42, 0xe4, 0xb8, 0x04]);
        assert!(out.windows(group.len()).any(|w| w == group));
        let back = ExportTraceServiceRequest::decode(&out[..]).unwrap();
        assert_eq!(
            back.resource_spans[0].scope_spans[0].spans[0]
                .attributes
                .len(),
            3
        );
    }
}
