//! Memory per tracked key, measured at 100k keys: the process's resident
//! memory (VmRSS) before and after 100k span keys (and, separately, 100k
//! metric series) have each seen enough records to be past their cold
//! start, divided by the number of keys. Linux only (reads /proc).
//!
//! `cargo bench --bench key_memory`

use std::hint::black_box;

use otel_anomaly::detect::keys::key_hash;
use otel_anomaly::detect::metric::{MetricDetector, MetricParams, PointValue};
use otel_anomaly::detect::span::{SpanDetector, SpanObs, SpanParams};

const KEYS: usize = 100_000;
/// Records per key: past the default cold start (50), with spread-out durations.
const PER_KEY: usize = 60;
/// Points per metric series: past the default baseline window (200 points),
/// so that every series holds its full window, profiles and tail.
const PER_SERIES: usize = 210;

fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn report(what: &str, before: u64, after: u64, estimate: Option<usize>) {
    let per_key = (after.saturating_sub(before)) as f64 * 1024.0 / KEYS as f64;
    print!(
        "{what}: {KEYS} keys, RSS +{:.1} MiB, {:.0} bytes ({:.2} KiB) per key",
        (after - before) as f64 / 1024.0,
        per_key,
        per_key / 1024.0
    );
    if let Some(e) = estimate {
        print!(" (detector's own estimate {e} bytes per key)");
    }
    println!(" — target <= 8 KiB");
}

fn spans() -> SpanDetector {
    let before = rss_kib().unwrap_or(0);
    let mut det = SpanDetector::new(SpanParams {
        max_keys: KEYS + 1,
        ..SpanParams::default()
    });
    let names: Vec<String> = (0..KEYS).map(|i| format!("GET /api/v1/item/{i}")).collect();
    let mut t = 1_800_000_000_000_000_000u64;
    for round in 0..PER_KEY {
        for (i, name) in names.iter().enumerate() {
            t += 1_000;
            let obs = SpanObs {
                service: "checkout",
                name,
                kind: 2,
                end_ns: t,
                // Durations from 1 ms to ~1 s, so each sketch holds many buckets.
                duration_ns: 1_000_000 * (1 + ((round * 7919 + i * 104_729) % 1000) as u64),
                is_error: round % 50 == 0,
                trace_id: &[7; 16],
            };
            black_box(det.observe(&obs));
        }
    }
    let after = rss_kib().unwrap_or(0);
    report("span keys", before, after, Some(det.memory_bytes() / KEYS));
    assert_eq!(det.keys(), KEYS);
    det
}

fn series() -> MetricDetector {
    let before = rss_kib().unwrap_or(0);
    let mut det = MetricDetector::new(MetricParams {
        max_series: KEYS + 1,
        ..MetricParams::default()
    });
    let keys: Vec<u64> = (0..KEYS as u64)
        .map(|i| key_hash(&[b"http.server.request.duration", &i.to_le_bytes()]))
        .collect();
    for round in 0..PER_SERIES {
        let t = 1_700_000_000_000_000_000 + round as u64 * 10_000_000_000;
        for (i, k) in keys.iter().enumerate() {
            black_box(det.observe(*k, t, PointValue::Gauge(((round * 31 + i) % 97) as f64)));
        }
    }
    let after = rss_kib().unwrap_or(0);
    let own: usize = det.states().map(|s| s.memory_bytes()).sum();
    report("metric series", before, after, Some(own / KEYS));
    assert_eq!(det.series(), KEYS);
    det
}

fn main() {
    if rss_kib().is_none() {
        eprintln!("key_memory needs /proc/self/status (Linux); skipped");
        return;
    }
    // Criterion-style filters are accepted and ignored: this bench has one job.
    // Both stay alive: memory freed by the first would be reused by the
    // second without growing the RSS, hiding its cost.
    let spans = spans();
    let series = series();
    black_box((spans.keys(), series.series()));
}
