//! `demo`: the sidecar on embedded defaults plus synthetic services sending
//! real OTLP/gRPC to it, with a latency fault injected on one endpoint; the
//! top anomalies are printed as they happen.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{status, ResourceSpans, ScopeSpans, Span, Status};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio_util::sync::CancellationToken;

use crate::pipeline::AnomalyFeed;

/// One synthetic endpoint.
struct Endpoint {
    service: &'static str,
    name: &'static str,
    kind: i32,
    median_ms: f64,
    sigma: f64,
    error_rate: f64,
    /// Requests per second.
    rate: f64,
}

const ENDPOINTS: &[Endpoint] = &[
    Endpoint {
        service: "frontend",
        name: "GET /",
        kind: 2,
        median_ms: 35.0,
        sigma: 0.35,
        error_rate: 0.002,
        rate: 60.0,
    },
    Endpoint {
        service: "frontend",
        name: "GET /cart",
        kind: 2,
        median_ms: 55.0,
        sigma: 0.3,
        error_rate: 0.002,
        rate: 40.0,
    },
    Endpoint {
        service: "cart",
        name: "GetCart",
        kind: 2,
        median_ms: 8.0,
        sigma: 0.4,
        error_rate: 0.001,
        rate: 40.0,
    },
    Endpoint {
        service: "cart",
        name: "redis GET",
        kind: 3,
        median_ms: 0.8,
        sigma: 0.5,
        error_rate: 0.0005,
        rate: 80.0,
    },
    Endpoint {
        service: "checkout",
        name: "POST /checkout",
        kind: 2,
        median_ms: 120.0,
        sigma: 0.3,
        error_rate: 0.005,
        rate: 10.0,
    },
    Endpoint {
        service: "payment",
        name: "Charge",
        kind: 2,
        median_ms: 90.0,
        sigma: 0.25,
        error_rate: 0.003,
        rate: 10.0,
    },
];

/// The endpoint that gets slow.
pub const FAULT_SERVICE: &str = "payment";
/// Its span name.
pub const FAULT_SPAN: &str = "Charge";
/// How much slower it gets.
const FAULT_FACTOR: f64 = 6.0;

fn lognormal(rng: &mut StdRng, median: f64, sigma: f64) -> f64 {
    let u1: f64 = rng.random::<f64>().max(1e-12);
    let u2: f64 = rng.random();
    let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
    median * (sigma * z).exp()
}

fn kv(k: &str, v: &str) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(v.into())),
        }),
        ..Default::default()
    }
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Builds one second's worth of spans (or `tick` worth); `fault` slows the fault endpoint.
fn build_batch(
    rng: &mut StdRng,
    tick: Duration,
    fault: bool,
    environment: &str,
) -> ExportTraceServiceRequest {
    let end_base = now_ns();
    let mut by_service: BTreeMap<&str, Vec<Span>> = BTreeMap::new();
    for ep in ENDPOINTS {
        let expected = ep.rate * tick.as_secs_f64();
        let n = expected.floor() as usize + usize::from(rng.random::<f64>() < expected.fract());
        for _ in 0..n {
            let mut ms = lognormal(rng, ep.median_ms, ep.sigma);
            if fault && ep.service == FAULT_SERVICE && ep.name == FAULT_SPAN {
                ms *= FAULT_FACTOR;
            }
            let end = end_base - rng.random_range(0..tick.as_nanos() as u64);
            let start = end.saturating_sub((ms * 1e6) as u64);
            let is_error = rng.random::<f64>() < ep.error_rate;
            let mut trace_id = vec![0u8; 16];
            let mut span_id = vec![0u8; 8];
            rng.fill(&mut trace_id[..]);
            rng.fill(&mut span_id[..]);
            trace_id[0] |= 1;
            span_id[0] |= 1;
            by_service.entry(ep.service).or_default().push(Span {
                trace_id,
                span_id,
                name: ep.name.into(),
                kind: ep.kind,
                start_time_unix_nano: start,
                end_time_unix_nano: end,
                attributes: vec![kv("demo.endpoint", ep.name)],
                status: Some(Status {
                    code: if is_error {
                        status::StatusCode::Error as i32
                    } else {
                        status::StatusCode::Ok as i32
                    },
                    message: if is_error {
                        "synthetic failure".into()
                    } else {
                        String::new()
                    },
                }),
                ..Default::default()
            });
        }
    }
    ExportTraceServiceRequest {
        resource_spans: by_service
            .into_iter()
            .map(|(service, spans)| ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![
                        kv("service.name", service),
                        kv("deployment.environment.name", environment),
                    ],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: "otel-anomaly-demo".into(),
                        ..Default::default()
                    }),
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect(),
    }
}

/// Sends synthetic traffic over real OTLP/gRPC until `stop`; the fault starts after `fault_after`.
pub async fn run_traffic(
    target: SocketAddr,
    fault_after: Duration,
    environment: String,
    stop: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    let mut client = TraceServiceClient::connect(format!("http://{target}")).await?;
    let mut rng = StdRng::seed_from_u64(42);
    let started = Instant::now();
    let tick = Duration::from_millis(250);
    let mut interval = tokio::time::interval(tick);
    let mut announced = false;
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = stop.cancelled() => return Ok(()),
        }
        let fault = started.elapsed() >= fault_after;
        if fault && !announced {
            announced = true;
            println!(
                "\n>>> fault injected: {FAULT_SERVICE} / {FAULT_SPAN} is now {FAULT_FACTOR}× slower (t = {}s)\n",
                started.elapsed().as_secs()
            );
        }
        let req = build_batch(&mut rng, tick, fault, &environment);
        if let Err(status) = client.export(req).await {
            eprintln!("demo traffic: export refused: {}", status.message());
        }
    }
}

/// Prints the top anomalies of the last `window`, grouped by key.
pub fn print_top(feed: &AnomalyFeed, window: Duration, elapsed: Duration) {
    let since = SystemTime::now() - window;
    let notes = feed.since(since);
    println!(
        "--- t = {:>4}s: top anomalies of the last {}s ---",
        elapsed.as_secs(),
        window.as_secs()
    );
    for e in feed.events_since(since) {
        let status = match e.status {
            crate::detect::interval::EventStatus::Opened => "opened",
            crate::detect::interval::EventStatus::Updated => "updated",
            crate::detect::interval::EventStatus::Closed => "closed",
        };
        println!(
            "    event {status}: {} / {} {} (score {:.0}): {}",
            e.service,
            e.name,
            e.signal.as_str(),
            e.score,
            e.explanation
        );
    }
    if notes.is_empty() {
        println!("    (none)");
        return;
    }
    let mut groups: BTreeMap<(String, String), (usize, f32, String)> = BTreeMap::new();
    for n in notes {
        let e = groups
            .entry((n.service.clone(), n.subject.clone()))
            .or_insert((0, 0.0, String::new()));
        e.0 += 1;
        if n.score >= e.1 {
            e.1 = n.score;
            e.2 = n.explanation.clone();
        }
    }
    let mut rows: Vec<_> = groups.into_iter().collect();
    rows.sort_by(|a, b| (b.1 .0 as f32 * b.1 .1).total_cmp(&(a.1 .0 as f32 * a.1 .1)));
    for ((service, subject), (count, max, explanation)) in rows.into_iter().take(5) {
        println!("    {max:>5.1}  {service} / {subject}  ({count} anomalous records)");
        println!("           {explanation}");
    }
}
