//! The metrics check (`receiver::wire_metrics`, which lets the pipeline hold
//! a metrics request as its bytes until a worker decodes it) against prost
//! and validation: for generated requests of every metric type, the check
//! accepts a request exactly when validation would keep all of its points,
//! counts them as prost does, and a request queued as bytes gives the same
//! documents as the decoded one (`fuzzing::wire_metrics` does the
//! comparison; the fuzz target `wire_metrics` runs it on arbitrary bytes).
//! Requests the check must leave to prost are declined.

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{
    exemplar, exponential_histogram_data_point::Buckets, metric, number_data_point,
    summary_data_point::ValueAtQuantile, Exemplar, ExponentialHistogram,
    ExponentialHistogramDataPoint, Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint,
    ResourceMetrics, ScopeMetrics, Sum, Summary, SummaryDataPoint,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use otel_anomaly::fuzzing;
use otel_anomaly::pipeline::process::metric_points;
use otel_anomaly::pipeline::validate;
use otel_anomaly::receiver::wire::Declined;
use otel_anomaly::receiver::wire_metrics::check_metrics;
use proptest::prelude::*;
use prost::Message;

/// Text with characters JSON must escape, non-ASCII and plain runs.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z./_ ]{0,12}",
        "[a-zA-Z0-9\"\\\\\n\t\u{1}é€😀 ]{0,10}",
        Just("service.name".to_string()),
    ]
}

fn attributes() -> impl Strategy<Value = Vec<KeyValue>> {
    proptest::collection::vec(
        (
            text(),
            prop_oneof![
                text().prop_map(any_value::Value::StringValue),
                any::<i64>().prop_map(any_value::Value::IntValue),
                any::<f64>().prop_map(any_value::Value::DoubleValue),
                any::<bool>().prop_map(any_value::Value::BoolValue),
            ],
        ),
        0..4,
    )
    .prop_map(|kvs| {
        kvs.into_iter()
            .map(|(key, v)| KeyValue {
                key,
                value: Some(AnyValue { value: Some(v) }),
                ..Default::default()
            })
            .collect()
    })
}

/// A time: zero now and then (validation removes such points).
fn time() -> impl Strategy<Value = u64> {
    prop_oneof![9 => 1u64..u64::MAX, 1 => Just(0u64)]
}

fn exemplars() -> impl Strategy<Value = Vec<Exemplar>> {
    proptest::collection::vec(
        (attributes(), any::<u64>(), any::<f64>(), any::<bool>()),
        0..2,
    )
    .prop_map(|es| {
        es.into_iter()
            .map(|(filtered_attributes, time_unix_nano, v, int)| Exemplar {
                filtered_attributes,
                time_unix_nano,
                span_id: vec![1; 8],
                trace_id: vec![2; 16],
                value: Some(if int {
                    exemplar::Value::AsInt(v as i64)
                } else {
                    exemplar::Value::AsDouble(v)
                }),
            })
            .collect()
    })
}

fn number_points() -> impl Strategy<Value = Vec<NumberDataPoint>> {
    proptest::collection::vec(
        (
            attributes(),
            any::<u64>(),
            time(),
            prop_oneof![
                4 => any::<f64>().prop_map(|v| Some(number_data_point::Value::AsDouble(v))),
                4 => any::<i64>().prop_map(|v| Some(number_data_point::Value::AsInt(v))),
                1 => Just(None),
            ],
            exemplars(),
            any::<u32>(),
        ),
        0..3,
    )
    .prop_map(|ps| {
        ps.into_iter()
            .map(
                |(attributes, start, time, value, exemplars, flags)| NumberDataPoint {
                    attributes,
                    start_time_unix_nano: start,
                    time_unix_nano: time,
                    value,
                    exemplars,
                    flags,
                },
            )
            .collect()
    })
}

fn histogram_points() -> impl Strategy<Value = Vec<HistogramDataPoint>> {
    proptest::collection::vec(
        (
            attributes(),
            time(),
            proptest::collection::vec(0u64..1000, 0..6),
            proptest::option::of(any::<f64>()),
            proptest::option::of(0.0f64..10.0),
            exemplars(),
        ),
        0..3,
    )
    .prop_map(|ps| {
        ps.into_iter()
            .map(
                |(attributes, time, counts, sum, min, exemplars)| HistogramDataPoint {
                    attributes,
                    start_time_unix_nano: 1,
                    time_unix_nano: time,
                    count: counts.iter().sum(),
                    sum,
                    explicit_bounds: (1..counts.len()).map(|i| i as f64 * 10.0).collect(),
                    bucket_counts: counts,
                    exemplars,
                    flags: 0,
                    min,
                    max: min.map(|m| m + 100.0),
                },
            )
            .collect()
    })
}

fn exponential_points() -> impl Strategy<Value = Vec<ExponentialHistogramDataPoint>> {
    proptest::collection::vec(
        (
            attributes(),
            time(),
            -10i32..10,
            -5i32..5,
            proptest::collection::vec(any::<u64>(), 0..5),
            proptest::option::of(any::<f64>()),
        ),
        0..3,
    )
    .prop_map(|ps| {
        ps.into_iter()
            .map(
                |(attributes, time, scale, offset, counts, sum)| ExponentialHistogramDataPoint {
                    attributes,
                    start_time_unix_nano: 1,
                    time_unix_nano: time,
                    count: counts.iter().fold(0u64, |a, c| a.wrapping_add(*c)),
                    sum,
                    scale,
                    zero_count: 3,
                    positive: Some(Buckets {
                        offset,
                        bucket_counts: counts.clone(),
                    }),
                    negative: (offset > 0).then(|| Buckets {
                        offset: -offset,
                        bucket_counts: counts,
                    }),
                    zero_threshold: 1e-9,
                    ..Default::default()
                },
            )
            .collect()
    })
}

fn summary_points() -> impl Strategy<Value = Vec<SummaryDataPoint>> {
    proptest::collection::vec(
        (
            attributes(),
            time(),
            any::<f64>(),
            proptest::collection::vec((0.0f64..1.0, any::<f64>()), 0..4),
        ),
        0..3,
    )
    .prop_map(|ps| {
        ps.into_iter()
            .map(|(attributes, time, sum, qs)| SummaryDataPoint {
                attributes,
                start_time_unix_nano: 1,
                time_unix_nano: time,
                count: 7,
                sum,
                quantile_values: qs
                    .into_iter()
                    .map(|(quantile, value)| ValueAtQuantile { quantile, value })
                    .collect(),
                flags: 0,
            })
            .collect()
    })
}

fn data() -> impl Strategy<Value = Option<metric::Data>> {
    prop_oneof![
        number_points().prop_map(|data_points| Some(metric::Data::Gauge(Gauge { data_points }))),
        (number_points(), 0i32..3, any::<bool>()).prop_map(|(data_points, t, m)| Some(
            metric::Data::Sum(Sum {
                data_points,
                aggregation_temporality: t,
                is_monotonic: m,
            })
        )),
        (histogram_points(), 0i32..3).prop_map(|(data_points, t)| Some(metric::Data::Histogram(
            Histogram {
                data_points,
                aggregation_temporality: t,
            }
        ))),
        (exponential_points(), 0i32..3).prop_map(|(data_points, t)| Some(
            metric::Data::ExponentialHistogram(ExponentialHistogram {
                data_points,
                aggregation_temporality: t,
            })
        )),
        summary_points()
            .prop_map(|data_points| Some(metric::Data::Summary(Summary { data_points }))),
        Just(None),
    ]
}

fn metric() -> impl Strategy<Value = Metric> {
    (
        prop_oneof![9 => "[a-z.]{1,12}", 1 => Just(String::new())],
        text(),
        attributes(),
        data(),
    )
        .prop_map(|(name, unit, metadata, data)| Metric {
            name,
            description: "d".into(),
            unit,
            metadata,
            data,
        })
}

fn request() -> impl Strategy<Value = ExportMetricsServiceRequest> {
    proptest::collection::vec(
        (
            proptest::option::of(attributes()),
            proptest::collection::vec(
                (
                    proptest::option::of(text()),
                    proptest::collection::vec(metric(), 0..4),
                ),
                0..3,
            ),
        ),
        0..3,
    )
    .prop_map(|rms| ExportMetricsServiceRequest {
        resource_metrics: rms
            .into_iter()
            .map(|(res, sms)| ResourceMetrics {
                resource: res.map(|attributes| Resource {
                    attributes,
                    ..Default::default()
                }),
                scope_metrics: sms
                    .into_iter()
                    .map(|(scope, metrics)| ScopeMetrics {
                        scope: scope.map(|name| InstrumentationScope {
                            name,
                            version: "1".into(),
                            ..Default::default()
                        }),
                        metrics,
                        schema_url: String::new(),
                    })
                    .collect(),
                schema_url: "https://opentelemetry.io/schemas/1.0".into(),
            })
            .collect(),
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Accepted exactly when validation keeps every point; then the count is
    /// prost's and the documents are the decoded request's.
    #[test]
    fn the_check_accepts_what_validation_keeps_whole(req in request()) {
        let bytes = req.encode_to_vec();
        let mut validated = req.clone();
        let checked = validate::metrics(&mut validated);
        match check_metrics(&bytes) {
            Ok(points) => {
                prop_assert_eq!(checked.rejected, 0);
                prop_assert_eq!(points, metric_points(&req));
            }
            Err(Declined) => prop_assert!(checked.rejected > 0, "declined a request validation keeps whole"),
        }
        fuzzing::wire_metrics(&bytes);
    }

    #[test]
    fn unknown_fields_are_skipped_as_prost_does(req in request(), tag in 20u32..40, value in any::<u64>()) {
        let mut bytes = req.encode_to_vec();
        prost::encoding::uint64::encode(tag, &value, &mut bytes);
        let decoded = ExportMetricsServiceRequest::decode(bytes.as_slice()).unwrap();
        prop_assert_eq!(&decoded, &req);
        let mut validated = req.clone();
        let whole = validate::metrics(&mut validated).rejected == 0;
        prop_assert_eq!(check_metrics(&bytes).is_ok(), whole);
        fuzzing::wire_metrics(&bytes);
    }
}

fn len_field(tag: u32, body: &[u8], out: &mut Vec<u8>) {
    prost::encoding::encode_key(tag, prost::encoding::WireType::LengthDelimited, out);
    prost::encoding::encode_varint(body.len() as u64, out);
    out.extend_from_slice(body);
}

/// A request of one metric, given as its bytes.
fn request_of_metric_bytes(metric: &[u8]) -> Vec<u8> {
    let mut sm = Vec::new();
    len_field(2, metric, &mut sm);
    let mut rm = Vec::new();
    len_field(2, &sm, &mut rm);
    let mut req = Vec::new();
    len_field(1, &rm, &mut req);
    req
}

fn gauge_point(time: u64) -> NumberDataPoint {
    NumberDataPoint {
        time_unix_nano: time,
        value: Some(number_data_point::Value::AsDouble(1.5)),
        ..Default::default()
    }
}

fn gauge(name: &str, points: Vec<NumberDataPoint>) -> Metric {
    Metric {
        name: name.into(),
        data: Some(metric::Data::Gauge(Gauge {
            data_points: points,
        })),
        ..Default::default()
    }
}

#[test]
fn requests_the_check_leaves_to_prost_are_declined() {
    let ok = gauge("m", vec![gauge_point(5)]).encode_to_vec();
    assert_eq!(check_metrics(&request_of_metric_bytes(&ok)), Ok(1));
    // Validation would remove points: no name, no time, no value.
    for m in [
        gauge("", vec![gauge_point(5)]),
        gauge("m", vec![gauge_point(0)]),
        gauge(
            "m",
            vec![NumberDataPoint {
                time_unix_nano: 5,
                ..Default::default()
            }],
        ),
    ] {
        assert_eq!(
            check_metrics(&request_of_metric_bytes(&m.encode_to_vec())),
            Err(Declined)
        );
    }
    // The data oneof twice (prost would merge the two gauges).
    let mut twice = ok.clone();
    let data = Gauge {
        data_points: vec![gauge_point(6)],
    }
    .encode_to_vec();
    len_field(5, &data, &mut twice);
    let bytes = request_of_metric_bytes(&twice);
    assert_eq!(check_metrics(&bytes), Err(Declined));
    assert_eq!(
        metric_points(&ExportMetricsServiceRequest::decode(bytes.as_slice()).unwrap()),
        2
    );
    // A name that is not UTF-8 (prost refuses it).
    let mut bad = Vec::new();
    len_field(1, &[0xff, 0xfe], &mut bad);
    let bytes = request_of_metric_bytes(&bad);
    assert_eq!(check_metrics(&bytes), Err(Declined));
    assert!(ExportMetricsServiceRequest::decode(bytes.as_slice()).is_err());
    // A packed bucket list cut short (prost refuses it).
    let mut point = Vec::new();
    prost::encoding::fixed64::encode(3, &5, &mut point);
    len_field(6, &[0u8; 12], &mut point);
    let mut hist = Vec::new();
    len_field(1, &point, &mut hist);
    let mut m = Vec::new();
    len_field(1, b"h", &mut m);
    len_field(9, &hist, &mut m);
    let bytes = request_of_metric_bytes(&m);
    assert_eq!(check_metrics(&bytes), Err(Declined));
    assert!(ExportMetricsServiceRequest::decode(bytes.as_slice()).is_err());
    // Resource entity refs: left to prost, as for traces.
    let mut res = Vec::new();
    len_field(3, b"", &mut res);
    let mut rm = Vec::new();
    len_field(1, &res, &mut rm);
    let mut req = Vec::new();
    len_field(1, &rm, &mut req);
    assert_eq!(check_metrics(&req), Err(Declined));
}

#[test]
fn the_last_name_and_time_win_as_in_prost() {
    // A point whose time is first 0, then set: prost keeps the last, validation keeps the point.
    let mut point = Vec::new();
    prost::encoding::fixed64::encode(3, &0, &mut point);
    prost::encoding::double::encode(4, &2.0, &mut point);
    prost::encoding::fixed64::encode(3, &9, &mut point);
    let mut g = Vec::new();
    len_field(1, &point, &mut g);
    let mut m = Vec::new();
    len_field(1, b"", &mut m);
    len_field(1, b"m", &mut m);
    len_field(5, &g, &mut m);
    let bytes = request_of_metric_bytes(&m);
    assert_eq!(check_metrics(&bytes), Ok(1));
    fuzzing::wire_metrics(&bytes);
    // The other way round: the last time is 0, the last name empty.
    let mut point = Vec::new();
    prost::encoding::fixed64::encode(3, &9, &mut point);
    prost::encoding::double::encode(4, &2.0, &mut point);
    prost::encoding::fixed64::encode(3, &0, &mut point);
    let mut g = Vec::new();
    len_field(1, &point, &mut g);
    let mut m = Vec::new();
    len_field(1, b"m", &mut m);
    len_field(5, &g, &mut m);
    assert_eq!(check_metrics(&request_of_metric_bytes(&m)), Err(Declined));
}

#[test]
fn unpacked_repeated_numbers_are_read_as_prost_reads_them() {
    // bucket_counts and explicit_bounds one value per field, as older senders write them.
    let mut point = Vec::new();
    prost::encoding::fixed64::encode(3, &9, &mut point);
    prost::encoding::fixed64::encode(4, &3, &mut point);
    for c in [1u64, 2] {
        prost::encoding::fixed64::encode(6, &c, &mut point);
    }
    prost::encoding::double::encode(7, &10.0, &mut point);
    let mut hist = Vec::new();
    len_field(1, &point, &mut hist);
    prost::encoding::int32::encode(2, &1, &mut hist);
    let mut m = Vec::new();
    len_field(1, b"h", &mut m);
    len_field(9, &hist, &mut m);
    let bytes = request_of_metric_bytes(&m);
    assert_eq!(check_metrics(&bytes), Ok(1));
    let req = ExportMetricsServiceRequest::decode(bytes.as_slice()).unwrap();
    let Some(metric::Data::Histogram(h)) =
        &req.resource_metrics[0].scope_metrics[0].metrics[0].data
    else {
        panic!("a histogram");
    };
    assert_eq!(h.data_points[0].bucket_counts, vec![1, 2]);
    fuzzing::wire_metrics(&bytes);
}

#[test]
fn the_load_generators_requests_are_taken_whole() {
    use otel_anomaly::loadgen::payload::{prepare, Encoding, SignalKind};
    for p in prepare(SignalKind::Metrics, Encoding::Protobuf, 4, 500, 8, 1) {
        let body = p.stamped(1_800_000_000_000_000_000);
        assert!(p.records >= 500);
        assert_eq!(check_metrics(&body), Ok(p.records as usize));
        fuzzing::wire_metrics(&body);
    }
}
