//! Realistic OTLP payloads, encoded once: several services, span names,
//! attributes and resource attributes (spans of about 200–400 bytes
//! encoded), and metrics (gauges, cumulative sums, histograms).
//!
//! Timestamps are rewritten in place before each send so that the receiver
//! sees current data: at build time every timestamp to be refreshed is
//! written as a marker value, its byte offset is recorded, and sending
//! writes `now + delta` over it.

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{
    metric, number_data_point, Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint,
    ResourceMetrics, ScopeMetrics, Sum,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    span, status, ResourceSpans, ScopeSpans, Span, Status,
};
use prost::Message;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Which signal to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SignalKind {
    Traces,
    Metrics,
}

/// Body encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Protobuf,
    Json,
}

/// The marker's top three bytes (little-endian bytes 5..8 of a fixed64).
/// 0xF1 0xE2 0xD3 is not valid UTF-8, so no string field can contain it.
const MARK_TOP: [u8; 3] = [0xD3, 0xE2, 0xF1];
const MARK_BASE: u64 = 0xF1E2_D300_0000_0000;
/// Deltas stay below 2^40 ns (about 18 minutes).
const MAX_DELTA: u64 = 1 << 40;

/// One pre-encoded request and where its timestamps sit.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The encoded body (protobuf or JSON).
    pub body: Vec<u8>,
    /// Records (spans or points) in the request.
    pub records: u64,
    /// (byte offset, nanoseconds after "now") of every refreshed timestamp.
    patches: Vec<(usize, u64)>,
    encoding: Encoding,
}

impl Prepared {
    /// The body with its timestamps set relative to `now_ns`.
    pub fn stamped(&self, now_ns: u64) -> Vec<u8> {
        let mut out = self.body.clone();
        self.stamp_into(&mut out, now_ns);
        out
    }

    /// Rewrites the timestamps of `out` (a copy of `body`).
    pub fn stamp_into(&self, out: &mut [u8], now_ns: u64) {
        for &(off, delta) in &self.patches {
            let t = now_ns + delta;
            match self.encoding {
                Encoding::Protobuf => out[off..off + 8].copy_from_slice(&t.to_le_bytes()),
                Encoding::Json => {
                    // 19 decimal digits until the year 2286; the offsets were found with 19.
                    let digits = format!("{t:019}");
                    out[off..off + 19].copy_from_slice(digits.as_bytes());
                }
            }
        }
    }

    /// Timestamps refreshed per send.
    pub fn stamps(&self) -> usize {
        self.patches.len()
    }
}

const SERVICES: &[(&str, &[&str])] = &[
    (
        "frontend",
        &[
            "GET /",
            "GET /product/{id}",
            "POST /cart",
            "GET /cart",
            "POST /checkout",
        ],
    ),
    (
        "cart",
        &[
            "GetCart",
            "AddItem",
            "EmptyCart",
            "redis HGETALL",
            "redis HSET",
        ],
    ),
    (
        "checkout",
        &[
            "PlaceOrder",
            "PrepareOrderItems",
            "send_email",
            "charge_card",
            "convert_currency",
        ],
    ),
    (
        "payment",
        &["Charge", "ValidateCard", "POST /v1/charges", "fraud_check"],
    ),
    (
        "product-catalog",
        &[
            "GetProduct",
            "ListProducts",
            "SearchProducts",
            "SELECT products",
        ],
    ),
    (
        "recommendation",
        &["ListRecommendations", "get_product_list", "model.predict"],
    ),
    ("shipping", &["GetQuote", "ShipOrder", "POST /quote"]),
    ("ad", &["GetAds", "ad.targeting", "SELECT ads"]),
];

fn kv_str(k: &str, v: &str) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(v.into())),
        }),
        ..Default::default()
    }
}

fn kv_int(k: &str, v: i64) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::IntValue(v)),
        }),
        ..Default::default()
    }
}

fn resource(service: &str, pod: usize) -> Resource {
    Resource {
        attributes: vec![
            kv_str("service.name", service),
            kv_str("service.version", "1.14.2"),
            kv_str("service.namespace", "shop"),
            kv_str("deployment.environment.name", "bench"),
            kv_str("k8s.namespace.name", "shop"),
            kv_str("k8s.pod.name", &format!("{service}-7d9f8b6c4-{pod:05}")),
            kv_str("host.name", &format!("node-{}", pod % 7)),
            kv_str("telemetry.sdk.language", "rust"),
            kv_str("telemetry.sdk.name", "opentelemetry"),
            kv_str("telemetry.sdk.version", "0.31.0"),
        ],
        ..Default::default()
    }
}

fn scope() -> InstrumentationScope {
    InstrumentationScope {
        name: "opentelemetry-instrumentation".into(),
        version: "0.31.0".into(),
        ..Default::default()
    }
}

fn rand_bytes(rng: &mut StdRng, n: usize) -> Vec<u8> {
    (0..n).map(|_| rng.random::<u8>()).collect()
}

/// A duration in ns drawn around `median_ms` with a long right tail.
fn duration_ns(rng: &mut StdRng, median_ms: f64) -> u64 {
    // exp(N(0, 0.5)) from a Box–Muller pair keeps the draw dependency-free.
    let (u1, u2): (f64, f64) = (rng.random::<f64>().max(1e-12), rng.random::<f64>());
    let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
    ((median_ms * (0.5 * z).exp()) * 1e6) as u64
}

fn span_attributes(rng: &mut StdRng, service: &str, name: &str) -> Vec<KeyValue> {
    let mut a = Vec::with_capacity(8);
    if name.starts_with("GET ") || name.starts_with("POST ") {
        let (method, route) = name.split_once(' ').unwrap_or(("GET", name));
        a.push(kv_str("http.request.method", method));
        a.push(kv_str("http.route", route));
        a.push(kv_int(
            "http.response.status_code",
            if rng.random_bool(0.02) { 500 } else { 200 },
        ));
        a.push(kv_str("url.scheme", "http"));
        a.push(kv_str("server.address", &format!("{service}.shop.svc")));
        a.push(kv_int("server.port", 8080));
        a.push(kv_str(
            "user_agent.original",
            "Mozilla/5.0 (X11; Linux x86_64)",
        ));
    } else if name.starts_with("SELECT") {
        a.push(kv_str("db.system.name", "postgresql"));
        a.push(kv_str("db.namespace", "shop"));
        a.push(kv_str(
            "db.query.text",
            &format!("{name} WHERE id = $1 LIMIT 20"),
        ));
        a.push(kv_str("server.address", "postgres.shop.svc"));
        a.push(kv_int("server.port", 5432));
    } else if name.starts_with("redis") {
        a.push(kv_str("db.system.name", "redis"));
        a.push(kv_str("db.operation.name", &name[6..]));
        a.push(kv_str("server.address", "redis-cart"));
        a.push(kv_int("server.port", 6379));
    } else {
        a.push(kv_str("rpc.system", "grpc"));
        a.push(kv_str("rpc.service", &format!("oteldemo.{service}")));
        a.push(kv_str("rpc.method", name));
        a.push(kv_int("rpc.grpc.status_code", 0));
        a.push(kv_str(
            "net.sock.peer.addr",
            &format!(
                "10.4.{}.{}",
                rng.random_range(0..8),
                rng.random_range(1..250)
            ),
        ));
    }
    a
}

/// A traces request of `spans` spans spread over `services` services.
pub fn trace_request(rng: &mut StdRng, spans: usize, services: usize) -> ExportTraceServiceRequest {
    let services = services.clamp(1, SERVICES.len());
    let mut per_service: Vec<Vec<Span>> = vec![Vec::new(); services];
    for i in 0..spans {
        let si = rng.random_range(0..services);
        let (service, names) = SERVICES[si];
        let name = names[rng.random_range(0..names.len())];
        let kind = if name.starts_with("SELECT") || name.starts_with("redis") {
            span::SpanKind::Client
        } else if i % 3 == 0 {
            span::SpanKind::Internal
        } else {
            span::SpanKind::Server
        };
        let median = 5.0 + (name.len() as f64) * 3.0;
        let dur = duration_ns(rng, median).min(MAX_DELTA / 2);
        let is_error = rng.random_bool(0.01);
        // Start = the send time plus a small offset, end = start + duration: both refreshed.
        let start_delta = rng.random_range(0..1_000_000u64);
        per_service[si].push(Span {
            trace_id: rand_bytes(rng, 16),
            span_id: rand_bytes(rng, 8),
            parent_span_id: if i % 4 == 0 {
                Vec::new()
            } else {
                rand_bytes(rng, 8)
            },
            name: name.into(),
            kind: kind as i32,
            start_time_unix_nano: MARK_BASE + start_delta,
            end_time_unix_nano: MARK_BASE + start_delta + dur,
            attributes: span_attributes(rng, service, name),
            status: Some(Status {
                code: if is_error {
                    status::StatusCode::Error as i32
                } else {
                    status::StatusCode::Unset as i32
                },
                message: if is_error {
                    "deadline exceeded".into()
                } else {
                    String::new()
                },
            }),
            ..Default::default()
        });
    }
    ExportTraceServiceRequest {
        resource_spans: per_service
            .into_iter()
            .enumerate()
            .filter(|(_, s)| !s.is_empty())
            .map(|(si, spans)| ResourceSpans {
                resource: Some(resource(SERVICES[si].0, si * 3 + 1)),
                scope_spans: vec![ScopeSpans {
                    scope: Some(scope()),
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect(),
    }
}

/// A metrics request of about `points` points (gauges, cumulative sums,
/// histograms) over `services` services.
pub fn metrics_request(
    rng: &mut StdRng,
    points: usize,
    services: usize,
    process_start_ns: u64,
) -> ExportMetricsServiceRequest {
    let services = services.clamp(1, SERVICES.len());
    let per_service = points.div_ceil(services);
    let mut resource_metrics = Vec::with_capacity(services);
    for (si, (service, names)) in SERVICES.iter().take(services).enumerate() {
        let mut metrics = Vec::new();
        let mut left = per_service;
        let mut i = 0usize;
        while left > 0 {
            let route = names[i % names.len()];
            let attrs = |rng: &mut StdRng| {
                vec![
                    kv_str("http.route", route),
                    kv_str(
                        "http.request.method",
                        if i.is_multiple_of(2) { "GET" } else { "POST" },
                    ),
                    kv_int(
                        "http.response.status_code",
                        if rng.random_bool(0.05) { 500 } else { 200 },
                    ),
                ]
            };
            let time = MARK_BASE + rng.random_range(0..1_000_000u64);
            let data = match i % 3 {
                0 => metric::Data::Gauge(Gauge {
                    data_points: vec![NumberDataPoint {
                        attributes: attrs(rng),
                        time_unix_nano: time,
                        value: Some(number_data_point::Value::AsDouble(
                            rng.random_range(0.0..100.0),
                        )),
                        ..Default::default()
                    }],
                }),
                1 => metric::Data::Sum(Sum {
                    data_points: vec![NumberDataPoint {
                        attributes: attrs(rng),
                        start_time_unix_nano: process_start_ns,
                        time_unix_nano: time,
                        value: Some(number_data_point::Value::AsInt(
                            rng.random_range(1_000..1_000_000),
                        )),
                        ..Default::default()
                    }],
                    aggregation_temporality: 2,
                    is_monotonic: true,
                }),
                _ => {
                    let counts: Vec<u64> = (0..8).map(|_| rng.random_range(0..500)).collect();
                    let count = counts.iter().sum();
                    metric::Data::Histogram(Histogram {
                        data_points: vec![HistogramDataPoint {
                            attributes: attrs(rng),
                            start_time_unix_nano: process_start_ns,
                            time_unix_nano: time,
                            count,
                            sum: Some(count as f64 * rng.random_range(5.0..80.0)),
                            bucket_counts: counts,
                            explicit_bounds: vec![5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0],
                            min: Some(0.4),
                            max: Some(730.0),
                            ..Default::default()
                        }],
                        aggregation_temporality: 2,
                    })
                }
            };
            let (name, unit) = match i % 3 {
                0 => ("process.cpu.utilization", "%"),
                1 => ("http.server.request.count", "{request}"),
                _ => ("http.server.request.duration", "ms"),
            };
            metrics.push(Metric {
                name: format!("{name}.{}", i / 3 % 4),
                unit: unit.into(),
                description: String::new(),
                data: Some(data),
                ..Default::default()
            });
            left -= 1;
            i += 1;
        }
        resource_metrics.push(ResourceMetrics {
            resource: Some(resource(service, si * 3 + 1)),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(scope()),
                metrics,
                ..Default::default()
            }],
            ..Default::default()
        });
    }
    ExportMetricsServiceRequest { resource_metrics }
}

/// Finds the marker timestamps in a protobuf body.
fn protobuf_patches(body: &[u8]) -> Vec<(usize, u64)> {
    let mut out = Vec::new();
    let mut i = 1;
    while i + 8 <= body.len() {
        // A fixed64 field: the tag byte before has wire type 1.
        if body[i + 5..i + 8] == MARK_TOP && body[i - 1] & 7 == 1 {
            let v = u64::from_le_bytes(body[i..i + 8].try_into().unwrap_or_default());
            out.push((i, v - MARK_BASE));
            i += 8;
        } else {
            i += 1;
        }
    }
    out
}

/// Finds the marker timestamps (`"…TimeUnixNano":"<19 digits>"`) in a JSON body.
fn json_patches(body: &[u8], keys: &[&str]) -> Vec<(usize, u64)> {
    let mut out = Vec::new();
    for key in keys {
        let pat = format!("\"{key}\":\"");
        let pat = pat.as_bytes();
        let mut from = 0;
        while let Some(pos) = find(&body[from..], pat) {
            let start = from + pos + pat.len();
            let end = start
                + body[start..]
                    .iter()
                    .take_while(|b| b.is_ascii_digit())
                    .count();
            let value: u64 = std::str::from_utf8(&body[start..end])
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            if end - start == 20 && value >= MARK_BASE {
                out.push((start, value - MARK_BASE));
            }
            from = end;
        }
    }
    out.sort_unstable();
    out
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Encodes `n` different requests of `records` records each.
pub fn prepare(
    signal: SignalKind,
    encoding: Encoding,
    n: usize,
    records: usize,
    services: usize,
    seed: u64,
) -> Vec<Prepared> {
    let mut rng = StdRng::seed_from_u64(seed);
    let process_start_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64 - 3_600_000_000_000)
        .unwrap_or(0);
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let (body, stamps_expected, json_keys): (Vec<u8>, usize, &[&str]) = match signal {
            SignalKind::Traces => {
                let req = trace_request(&mut rng, records, services);
                let body = match encoding {
                    Encoding::Protobuf => req.encode_to_vec(),
                    Encoding::Json => serde_json::to_vec(&req).unwrap_or_default(),
                };
                (body, records * 2, &["startTimeUnixNano", "endTimeUnixNano"])
            }
            SignalKind::Metrics => {
                let req = metrics_request(&mut rng, records, services, process_start_ns);
                let points: usize = req
                    .resource_metrics
                    .iter()
                    .flat_map(|r| &r.scope_metrics)
                    .map(|s| s.metrics.len())
                    .sum();
                let body = match encoding {
                    Encoding::Protobuf => req.encode_to_vec(),
                    Encoding::Json => serde_json::to_vec(&req).unwrap_or_default(),
                };
                (body, points, &["timeUnixNano"])
            }
        };
        let patches = match encoding {
            Encoding::Protobuf => protobuf_patches(&body),
            Encoding::Json => json_patches(&body, json_keys),
        };
        // A random id that happens to look like a marker would be patched
        // too; such a request (about one in a billion) is drawn again.
        if patches.len() != stamps_expected {
            continue;
        }
        let records = match signal {
            SignalKind::Traces => records as u64,
            SignalKind::Metrics => stamps_expected as u64,
        };
        out.push(Prepared {
            body,
            records,
            patches,
            encoding,
        });
    }
    // JSON bodies carry 20-digit markers; stamping writes 19 digits, so shift
    // the text once: rebuild them with a 19-digit placeholder.
    if encoding == Encoding::Json {
        for p in &mut out {
            let mut body = Vec::with_capacity(p.body.len());
            let mut last = 0;
            for (off, _) in p.patches.iter_mut() {
                body.extend_from_slice(&p.body[last..*off]);
                let new_off = body.len();
                body.extend_from_slice(b"0000000000000000000");
                last = *off + 20;
                *off = new_off;
            }
            body.extend_from_slice(&p.body[last..]);
            p.body = body;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;

    #[test]
    fn spans_are_realistic_in_size_and_stamped() {
        let p = prepare(SignalKind::Traces, Encoding::Protobuf, 2, 200, 6, 7);
        assert_eq!(p.len(), 2);
        let per_span = p[0].body.len() as f64 / p[0].records as f64;
        assert!(
            (200.0..=400.0).contains(&per_span),
            "{per_span} bytes per span"
        );
        let now = 1_800_000_000_000_000_000;
        let req = ExportTraceServiceRequest::decode(p[0].stamped(now).as_slice()).unwrap();
        let spans: Vec<_> = req
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .flat_map(|s| &s.spans)
            .collect();
        assert_eq!(spans.len(), 200);
        for s in spans {
            assert!(s.start_time_unix_nano >= now && s.start_time_unix_nano < now + 1_000_000);
            assert!(s.end_time_unix_nano >= s.start_time_unix_nano);
        }
        assert_ne!(p[0].body, p[1].body, "payloads rotate, not repeat");
    }

    #[test]
    fn json_bodies_are_stamped_and_decodable() {
        let p = prepare(SignalKind::Traces, Encoding::Json, 1, 50, 3, 1);
        let now = 1_800_000_000_000_000_000;
        let req: ExportTraceServiceRequest = serde_json::from_slice(&p[0].stamped(now)).unwrap();
        let s = &req.resource_spans[0].scope_spans[0].spans[0];
        assert!(s.start_time_unix_nano >= now && s.end_time_unix_nano >= s.start_time_unix_nano);
        let m = prepare(SignalKind::Metrics, Encoding::Json, 1, 30, 3, 1);
        let req: ExportMetricsServiceRequest = serde_json::from_slice(&m[0].stamped(now)).unwrap();
        assert_eq!(m[0].records, 30);
        assert!(!req.resource_metrics.is_empty());
    }

    #[test]
    fn metric_points_are_stamped_but_start_times_kept() {
        let p = prepare(SignalKind::Metrics, Encoding::Protobuf, 1, 90, 3, 3);
        assert_eq!(p[0].records, 90);
        let now = 1_800_000_000_000_000_000;
        let req = ExportMetricsServiceRequest::decode(p[0].stamped(now).as_slice()).unwrap();
        for m in req
            .resource_metrics
            .iter()
            .flat_map(|r| &r.scope_metrics)
            .flat_map(|s| &s.metrics)
        {
            match m.data.as_ref().unwrap() {
                metric::Data::Gauge(g) => assert!(g.data_points[0].time_unix_nano >= now),
                metric::Data::Sum(s) => {
                    assert!(s.data_points[0].time_unix_nano >= now);
                    assert!(s.data_points[0].start_time_unix_nano < now);
                }
                metric::Data::Histogram(h) => assert!(h.data_points[0].time_unix_nano >= now),
                _ => panic!("unexpected metric type"),
            }
        }
    }
}
