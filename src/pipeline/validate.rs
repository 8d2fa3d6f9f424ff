//! Checks that run before a request is acknowledged: records that cannot be
//! stored correctly are removed and reported back as OTLP `partial_success`.

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::metrics::v1::metric;

/// Outcome of validating one request.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Checked {
    /// Records kept.
    pub accepted: usize,
    /// Records removed.
    pub rejected: usize,
    /// Why (the first reason seen), for `partial_success.error_message`.
    pub message: String,
}

impl Checked {
    fn reject(&mut self, why: &str) {
        self.rejected += 1;
        if self.message.is_empty() {
            self.message = why.to_string();
        }
    }
}

fn valid_id(id: &[u8], len: usize) -> bool {
    id.len() == len && id.iter().any(|b| *b != 0)
}

/// Removes spans whose trace or span id is invalid (the document `_id` is built from them).
pub fn traces(req: &mut ExportTraceServiceRequest) -> Checked {
    let mut c = Checked::default();
    for rs in &mut req.resource_spans {
        for ss in &mut rs.scope_spans {
            ss.spans.retain(|s| {
                if !valid_id(&s.trace_id, 16) {
                    c.reject("span with an invalid trace_id (must be 16 bytes, not all zero)");
                    return false;
                }
                if !valid_id(&s.span_id, 8) {
                    c.reject("span with an invalid span_id (must be 8 bytes, not all zero)");
                    return false;
                }
                c.accepted += 1;
                true
            });
        }
    }
    c
}

/// Removes data points without a timestamp, and number points without a value.
pub fn metrics(req: &mut ExportMetricsServiceRequest) -> Checked {
    let mut c = Checked::default();
    for rm in &mut req.resource_metrics {
        for sm in &mut rm.scope_metrics {
            for m in &mut sm.metrics {
                if m.name.is_empty() {
                    let n = count_points(m.data.as_ref());
                    for _ in 0..n {
                        c.reject("metric without a name");
                    }
                    m.data = None;
                    continue;
                }
                macro_rules! keep {
                    ($points:expr, $extra:expr) => {
                        $points.retain(|p| {
                            if p.time_unix_nano == 0 {
                                c.reject("data point without time_unix_nano");
                                return false;
                            }
                            if !$extra(p) {
                                c.reject("number data point without a value");
                                return false;
                            }
                            c.accepted += 1;
                            true
                        })
                    };
                }
                match &mut m.data {
                    Some(metric::Data::Gauge(g)) => keep!(
                        g.data_points,
                        |p: &opentelemetry_proto::tonic::metrics::v1::NumberDataPoint| p
                            .value
                            .is_some()
                    ),
                    Some(metric::Data::Sum(s)) => keep!(
                        s.data_points,
                        |p: &opentelemetry_proto::tonic::metrics::v1::NumberDataPoint| p
                            .value
                            .is_some()
                    ),
                    Some(metric::Data::Histogram(h)) => keep!(h.data_points, |_| true),
                    Some(metric::Data::ExponentialHistogram(h)) => keep!(h.data_points, |_| true),
                    Some(metric::Data::Summary(s)) => keep!(s.data_points, |_| true),
                    None => {}
                }
            }
        }
    }
    c
}

/// Number of data points in a metric.
pub fn count_points(d: Option<&metric::Data>) -> usize {
    match d {
        Some(metric::Data::Gauge(g)) => g.data_points.len(),
        Some(metric::Data::Sum(s)) => s.data_points.len(),
        Some(metric::Data::Histogram(h)) => h.data_points.len(),
        Some(metric::Data::ExponentialHistogram(h)) => h.data_points.len(),
        Some(metric::Data::Summary(s)) => s.data_points.len(),
        None => 0,
    }
}

/// Every log record is storable; counts them.
pub fn logs(req: &ExportLogsServiceRequest) -> Checked {
    let accepted = req
        .resource_logs
        .iter()
        .flat_map(|r| &r.scope_logs)
        .map(|s| s.log_records.len())
        .sum();
    Checked {
        accepted,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

    #[test]
    fn invalid_span_ids_are_rejected_with_a_reason() {
        let good = Span {
            trace_id: vec![1; 16],
            span_id: vec![1; 8],
            ..Default::default()
        };
        let zero_trace = Span {
            trace_id: vec![0; 16],
            span_id: vec![1; 8],
            ..Default::default()
        };
        let short_span = Span {
            trace_id: vec![1; 16],
            span_id: vec![1; 4],
            ..Default::default()
        };
        let mut req = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans: vec![good, zero_trace, short_span],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let c = traces(&mut req);
        assert_eq!((c.accepted, c.rejected), (1, 2));
        assert!(c.message.contains("trace_id"));
        assert_eq!(req.resource_spans[0].scope_spans[0].spans.len(), 1);
    }
}
