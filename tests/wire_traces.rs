//! The wire reader of trace requests (`receiver::wire`, the sidecar's gRPC
//! hot path) against prost: for generated requests, the reader accepts
//! every one with valid ids, and the documents it writes are byte for byte
//! those of the prost path (`fuzzing::wire_traces` does the comparison; the
//! fuzz target `wire_traces` runs it on arbitrary bytes). Requests the
//! reader must leave to prost are declined.

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{
    any_value, AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{span, ResourceSpans, ScopeSpans, Span, Status};
use otel_anomaly::fuzzing;
use otel_anomaly::receiver::wire::{check_traces, Declined};
use proptest::prelude::*;
use prost::Message;

/// Text with characters JSON must escape, non-ASCII and plain runs.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z./_ ]{0,12}",
        "[a-zA-Z0-9\"\\\\\n\t\u{1}\u{1f}é€😀 ]{0,10}",
        Just(String::new()),
        Just("service.name".to_string()),
    ]
}

fn any_value() -> impl Strategy<Value = Option<AnyValue>> {
    let leaf = prop_oneof![
        text().prop_map(any_value::Value::StringValue),
        any::<bool>().prop_map(any_value::Value::BoolValue),
        any::<i64>().prop_map(any_value::Value::IntValue),
        prop_oneof![
            any::<f64>(),
            Just(f64::NAN),
            Just(f64::INFINITY),
            Just(-0.0),
            Just(1e300)
        ]
        .prop_map(any_value::Value::DoubleValue),
        proptest::collection::vec(any::<u8>(), 0..12).prop_map(any_value::Value::BytesValue),
        any::<i32>().prop_map(any_value::Value::StringValueStrindex),
    ];
    let value = leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(|vs| {
                any_value::Value::ArrayValue(ArrayValue {
                    values: vs
                        .into_iter()
                        .map(|v| AnyValue { value: Some(v) })
                        .collect(),
                })
            }),
            proptest::collection::vec((text(), inner), 0..4).prop_map(|kvs| {
                any_value::Value::KvlistValue(KeyValueList {
                    values: kvs
                        .into_iter()
                        .map(|(key, v)| KeyValue {
                            key,
                            value: Some(AnyValue { value: Some(v) }),
                            ..Default::default()
                        })
                        .collect(),
                })
            }),
        ]
    });
    prop_oneof![
        8 => value.prop_map(|v| Some(AnyValue { value: Some(v) })),
        1 => Just(Some(AnyValue { value: None })),
        1 => Just(None),
    ]
}

/// Attributes, with repeated keys now and then (the first one is kept).
fn attributes() -> impl Strategy<Value = Vec<KeyValue>> {
    proptest::collection::vec(
        (prop_oneof![text(), Just("dup".to_string())], any_value()),
        0..6,
    )
    .prop_map(|kvs| {
        kvs.into_iter()
            .map(|(key, value)| KeyValue {
                key,
                value,
                ..Default::default()
            })
            .collect()
    })
}

fn id(n: usize) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), n).prop_map(move |mut v| {
        v[0] |= 1; // valid: not all zero
        v
    })
}

/// Times in the past (the detector caps spans from the future at now + 60 s).
fn time() -> impl Strategy<Value = u64> {
    1_600_000_000_000_000_000u64..1_700_000_000_000_000_000
}

fn span() -> impl Strategy<Value = Span> {
    (
        (
            id(16),
            id(8),
            prop_oneof![Just(vec![]), id(8)],
            text(),
            text(),
        ),
        (0i32..7, time(), 0u64..5_000_000_000, any::<u32>()),
        attributes(),
        (0u32..3, 0u32..3, 0u32..3),
        proptest::collection::vec((time(), text(), attributes()), 0..3),
        proptest::collection::vec((id(16), id(8), text(), attributes(), any::<u32>()), 0..2),
        proptest::option::of((0i32..4, text())),
    )
        .prop_map(
            |(
                (trace_id, span_id, parent_span_id, trace_state, name),
                (kind, start, dur, flags),
                attributes,
                (da, de, dl),
                events,
                links,
                status,
            )| Span {
                trace_id,
                span_id,
                trace_state,
                parent_span_id,
                flags,
                name,
                kind,
                start_time_unix_nano: start,
                end_time_unix_nano: start + dur,
                attributes,
                dropped_attributes_count: da,
                events: events
                    .into_iter()
                    .map(|(t, name, attributes)| span::Event {
                        time_unix_nano: t,
                        name,
                        attributes,
                        dropped_attributes_count: 0,
                    })
                    .collect(),
                dropped_events_count: de,
                links: links
                    .into_iter()
                    .map(
                        |(trace_id, span_id, trace_state, attributes, flags)| span::Link {
                            trace_id,
                            span_id,
                            trace_state,
                            attributes,
                            dropped_attributes_count: 0,
                            flags,
                        },
                    )
                    .collect(),
                dropped_links_count: dl,
                status: status.map(|(code, message)| Status { message, code }),
            },
        )
}

fn request() -> impl Strategy<Value = ExportTraceServiceRequest> {
    let service = prop_oneof![
        Just(None),
        text().prop_map(Some),
        Just(Some("checkout".to_string()))
    ];
    let resource = (service, attributes(), 0u32..2, any::<bool>()).prop_map(
        |(service, mut attributes, dropped, present)| {
            if let Some(s) = service {
                attributes.insert(
                    0,
                    KeyValue {
                        key: "service.name".into(),
                        value: Some(AnyValue {
                            value: Some(any_value::Value::StringValue(s)),
                        }),
                        ..Default::default()
                    },
                );
            }
            present.then_some(Resource {
                attributes,
                dropped_attributes_count: dropped,
                ..Default::default()
            })
        },
    );
    let scope = proptest::option::of((text(), text(), attributes())).prop_map(|s| {
        s.map(|(name, version, attributes)| InstrumentationScope {
            name,
            version,
            attributes,
            dropped_attributes_count: 0,
        })
    });
    let scope_spans = (scope, proptest::collection::vec(span(), 0..5), text()).prop_map(
        |(scope, spans, schema_url)| ScopeSpans {
            scope,
            spans,
            schema_url,
        },
    );
    let resource_spans = (
        resource,
        proptest::collection::vec(scope_spans, 0..3),
        text(),
    )
        .prop_map(|(resource, scope_spans, schema_url)| ResourceSpans {
            resource,
            scope_spans,
            schema_url,
        });
    proptest::collection::vec(resource_spans, 0..3)
        .prop_map(|resource_spans| ExportTraceServiceRequest { resource_spans })
}

fn spans_of(req: &ExportTraceServiceRequest) -> usize {
    req.resource_spans
        .iter()
        .flat_map(|r| &r.scope_spans)
        .map(|s| s.spans.len())
        .sum()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn the_wire_reader_writes_the_documents_prost_does(req in request()) {
        let bytes = req.encode_to_vec();
        // Every generated request has valid ids and nothing the reader leaves to prost.
        prop_assert_eq!(check_traces(&bytes), Ok(spans_of(&req)));
        fuzzing::wire_traces(&bytes);
    }

    #[test]
    fn unknown_fields_are_skipped_as_prost_does(req in request(), tag in 17u32..40, value in any::<u64>()) {
        // An unknown varint field at the end of the request.
        let mut bytes = req.encode_to_vec();
        prost::encoding::encode_key(tag, prost::encoding::WireType::Varint, &mut bytes);
        prost::encoding::encode_varint(value, &mut bytes);
        prop_assert_eq!(check_traces(&bytes), Ok(spans_of(&req)));
        fuzzing::wire_traces(&bytes);
    }
}

fn one_span_request(span: Span, resource: Option<Resource>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource,
            scope_spans: vec![ScopeSpans {
                spans: vec![span],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn good_span() -> Span {
    Span {
        trace_id: vec![1; 16],
        span_id: vec![2; 8],
        name: "GET /cart".into(),
        start_time_unix_nano: 1_650_000_000_000_000_000,
        end_time_unix_nano: 1_650_000_000_100_000_000,
        ..Default::default()
    }
}

#[test]
fn requests_the_reader_leaves_to_prost_are_declined() {
    // Invalid ids: validation removes the span with a partial success.
    let mut s = good_span();
    s.trace_id = vec![0; 16];
    let bytes = one_span_request(s, None).encode_to_vec();
    assert_eq!(check_traces(&bytes), Err(Declined));
    let mut s = good_span();
    s.span_id = vec![1; 4];
    assert_eq!(
        check_traces(&one_span_request(s, None).encode_to_vec()),
        Err(Declined)
    );

    // A singular message twice (prost merges the two): the status of a span.
    let ok = one_span_request(good_span(), None).encode_to_vec();
    assert_eq!(check_traces(&ok), Ok(1));
    let status = Status {
        message: "x".into(),
        code: 2,
    }
    .encode_to_vec();
    let mut span = good_span().encode_to_vec();
    for _ in 0..2 {
        len_field(15, &status, &mut span);
    }
    let bytes = request_of_span_bytes(&span);
    assert!(ExportTraceServiceRequest::decode(bytes.as_slice()).is_ok());
    assert_eq!(check_traces(&bytes), Err(Declined));

    // Invalid UTF-8 in a string: prost refuses it, so must the reader.
    let mut bytes = one_span_request(good_span(), None).encode_to_vec();
    let at = bytes
        .windows(9)
        .position(|w| w == b"GET /cart")
        .expect("the name is in the bytes");
    bytes[at] = 0xff;
    assert!(ExportTraceServiceRequest::decode(bytes.as_slice()).is_err());
    assert_eq!(check_traces(&bytes), Err(Declined));

    // Entity references of a resource (not read by the reader).
    let resource = Resource {
        entity_refs: vec![Default::default()],
        ..Default::default()
    };
    let bytes = one_span_request(good_span(), Some(resource)).encode_to_vec();
    assert_eq!(check_traces(&bytes), Err(Declined));

    // Truncated bytes: prost's error, not the reader's.
    let bytes = one_span_request(good_span(), None).encode_to_vec();
    assert_eq!(check_traces(&bytes[..bytes.len() - 1]), Err(Declined));
}

/// Appends field `tag` holding `body` (wire type LEN).
fn len_field(tag: u32, body: &[u8], out: &mut Vec<u8>) {
    prost::encoding::encode_key(tag, prost::encoding::WireType::LengthDelimited, out);
    prost::encoding::encode_varint(body.len() as u64, out);
    out.extend_from_slice(body);
}

/// A request of one resource, one scope and the span given as raw bytes
/// (for spans prost would not write, e.g. a field twice).
fn request_of_span_bytes(span: &[u8]) -> Vec<u8> {
    let mut scope = Vec::new();
    len_field(2, span, &mut scope);
    let mut rs = Vec::new();
    len_field(2, &scope, &mut rs);
    let mut bytes = Vec::new();
    len_field(1, &rs, &mut bytes);
    bytes
}

#[test]
fn a_last_scalar_wins_as_in_prost() {
    // The name twice: prost keeps the last one, and so do the documents.
    let mut span = good_span().encode_to_vec();
    prost::encoding::string::encode(5, &"POST /pay".to_string(), &mut span);
    let bytes = request_of_span_bytes(&span);
    let req = ExportTraceServiceRequest::decode(bytes.as_slice()).unwrap();
    assert_eq!(
        req.resource_spans[0].scope_spans[0].spans[0].name,
        "POST /pay"
    );
    assert_eq!(check_traces(&bytes), Ok(1));
    fuzzing::wire_traces(&bytes);
}

#[test]
fn many_attributes_with_repeated_keys() {
    // Past the reader's 32 keys on the stack: duplicates found by reading again.
    let mut s = good_span();
    s.attributes = (0..45)
        .map(|i| KeyValue {
            key: format!("k{}", if i % 7 == 6 { i / 3 } else { i }),
            value: Some(AnyValue {
                value: Some(any_value::Value::IntValue(i)),
            }),
            ..Default::default()
        })
        .collect();
    let bytes = one_span_request(s, None).encode_to_vec();
    assert_eq!(check_traces(&bytes), Ok(1));
    fuzzing::wire_traces(&bytes);
}
