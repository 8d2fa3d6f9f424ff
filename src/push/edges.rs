//! Caller → callee service edges from the parent/child spans of one OTLP
//! request, for the heartbeat's service graph (`PushHandle::add_edge`). Only
//! parents within the same request are seen; a collector batches by time, so
//! most of a trace's spans travel together.

use std::collections::HashMap;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;

fn service_of(rs: &opentelemetry_proto::tonic::trace::v1::ResourceSpans) -> &str {
    rs.resource
        .as_ref()
        .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| match &v.value {
            Some(Value::StringValue(s)) => Some(s.as_str()),
            _ => None,
        })
        .unwrap_or("unknown_service")
}

/// Counts of (caller service, callee service) over the spans whose parent is in `req`.
pub fn edges_of(req: &ExportTraceServiceRequest) -> HashMap<(String, String), u64> {
    let mut owner: HashMap<(&[u8], &[u8]), &str> = HashMap::new();
    for rs in &req.resource_spans {
        let service = service_of(rs);
        for s in rs.scope_spans.iter().flat_map(|ss| &ss.spans) {
            owner.insert((&s.trace_id, &s.span_id), service);
        }
    }
    let mut edges = HashMap::new();
    for rs in &req.resource_spans {
        let callee = service_of(rs);
        for s in rs.scope_spans.iter().flat_map(|ss| &ss.spans) {
            if s.parent_span_id.is_empty() {
                continue;
            }
            if let Some(caller) = owner.get(&(s.trace_id.as_slice(), s.parent_span_id.as_slice())) {
                if *caller != callee {
                    *edges
                        .entry((caller.to_string(), callee.to_string()))
                        .or_insert(0) += 1;
                }
            }
        }
    }
    edges
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

    fn rs(service: &str, spans: Vec<Span>) -> ResourceSpans {
        ResourceSpans {
            resource: Some(Resource {
                attributes: vec![KeyValue {
                    key: "service.name".into(),
                    value: Some(AnyValue {
                        value: Some(Value::StringValue(service.into())),
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn span(trace: u8, id: u8, parent: Option<u8>) -> Span {
        Span {
            trace_id: vec![trace; 16],
            span_id: vec![id; 8],
            parent_span_id: parent.map(|p| vec![p; 8]).unwrap_or_default(),
            ..Default::default()
        }
    }

    #[test]
    fn parent_in_another_service_makes_an_edge() {
        let req = ExportTraceServiceRequest {
            resource_spans: vec![
                rs(
                    "frontend",
                    vec![span(1, 1, None), span(1, 2, Some(1)), span(2, 1, None)],
                ),
                rs(
                    "payment",
                    vec![
                        span(1, 3, Some(2)),
                        span(1, 4, Some(3)),
                        span(2, 5, Some(1)),
                    ],
                ),
                // parent not in this request: no edge
                rs("search", vec![span(3, 9, Some(8))]),
            ],
        };
        let e = edges_of(&req);
        assert_eq!(e.len(), 1, "{e:?}");
        // span 3 (trace 1) under frontend's span 2, span 5 (trace 2) under frontend's span 1;
        // span 4 is under span 3 of the same service: no edge.
        assert_eq!(e[&("frontend".to_string(), "payment".to_string())], 2);
    }
}
