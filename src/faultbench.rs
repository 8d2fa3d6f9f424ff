//! The trace-fault benchmark: labelled synthetic span streams with injected
//! faults, run through the real span detector, scored for precision, recall,
//! time to detect and false alerts.
//!
//! Each key (service, span name) gets its own traffic: a base rate with a
//! daily cycle (Poisson arrivals per second), a log-normal latency (some keys
//! bimodal: a slow mode for cache misses), and a small base error rate. A
//! share of the keys gets one fault after the warm-up:
//!
//! | fault | what changes | how long |
//! |---|---|---|
//! | latency | duration × 2–5 | 5–15 min |
//! | error burst | error rate 5–20 % | 5–15 min |
//! | throughput drop | rate × 0.1–0.5 | 5–15 min |
//! | slow leak | duration + 2 % per minute | 40 min |
//! | level shift | duration × 2 for good (a deploy) | to the end |
//!
//! Everything is seeded, so a run is reproducible. The detector sees spans
//! one second at a time in time order and is ticked at every interval end,
//! as the sidecar does.

use std::collections::HashMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, LogNormal, Poisson};

use crate::detect::interval::{AnomalyEvent, EventStatus};
use crate::detect::span::{SpanDetector, SpanObs, SpanParams};

const S: u64 = 1_000_000_000;
const DAY_S: u64 = 86_400;

/// Benchmark size and seed.
#[derive(Debug, Clone, Copy)]
pub struct BenchParams {
    /// Number of keys.
    pub keys: usize,
    /// Simulated length, seconds (after the warm-up).
    pub duration_s: u64,
    /// Warm-up without faults, seconds (not scored).
    pub warmup_s: u64,
    /// Share of keys that get a fault.
    pub faulty_share: f64,
    /// Mean spans per second per key (rates are spread around it).
    pub mean_rate: f64,
    /// RNG seed.
    pub seed: u64,
    /// Detector interval, ns.
    pub interval_ns: u64,
}

impl Default for BenchParams {
    fn default() -> Self {
        Self {
            keys: 100,
            duration_s: DAY_S,
            warmup_s: 3_600,
            faulty_share: 0.5,
            mean_rate: 10.0,
            seed: 1,
            interval_ns: 10 * S,
        }
    }
}

/// Kind of injected fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FaultKind {
    /// Duration multiplied.
    Latency,
    /// Error rate raised.
    ErrorBurst,
    /// Rate cut.
    ThroughputDrop,
    /// Duration growing by 2 % a minute.
    SlowLeak,
    /// Duration doubled for good.
    LevelShift,
}

impl FaultKind {
    const ALL: [FaultKind; 5] = [
        FaultKind::Latency,
        FaultKind::ErrorBurst,
        FaultKind::ThroughputDrop,
        FaultKind::SlowLeak,
        FaultKind::LevelShift,
    ];

    /// Name in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::Latency => "latency x2-5",
            FaultKind::ErrorBurst => "error burst",
            FaultKind::ThroughputDrop => "throughput drop",
            FaultKind::SlowLeak => "slow leak",
            FaultKind::LevelShift => "level shift",
        }
    }
}

#[derive(Debug, Clone)]
struct Fault {
    kind: FaultKind,
    start_s: u64,
    end_s: u64,
    /// Latency factor, error rate or rate factor, by kind.
    size: f64,
}

#[derive(Debug, Clone)]
struct Key {
    service: String,
    name: String,
    rate: f64,
    /// Phase of the daily cycle, radians.
    phase: f64,
    median_ms: f64,
    sigma: f64,
    /// Share of spans in the slow mode (0 for unimodal keys) and its factor.
    slow_share: f64,
    slow_factor: f64,
    error_rate: f64,
    fault: Option<Fault>,
}

impl Key {
    fn rate_at(&self, t_s: u64) -> f64 {
        let day = 2.0 * std::f64::consts::PI * (t_s % DAY_S) as f64 / DAY_S as f64;
        let mut r = self.rate * (1.0 + 0.5 * (day + self.phase).sin());
        if let Some(f) = &self.fault {
            if f.kind == FaultKind::ThroughputDrop && (f.start_s..f.end_s).contains(&t_s) {
                r *= f.size;
            }
        }
        r
    }

    fn latency_factor(&self, t_s: u64) -> f64 {
        match &self.fault {
            Some(f) if (f.start_s..f.end_s).contains(&t_s) => match f.kind {
                FaultKind::Latency | FaultKind::LevelShift => f.size,
                FaultKind::SlowLeak => 1.0 + 0.02 * (t_s - f.start_s) as f64 / 60.0,
                _ => 1.0,
            },
            _ => 1.0,
        }
    }

    fn error_rate_at(&self, t_s: u64) -> f64 {
        match &self.fault {
            Some(f) if f.kind == FaultKind::ErrorBurst && (f.start_s..f.end_s).contains(&t_s) => {
                f.size
            }
            _ => self.error_rate,
        }
    }
}

/// Outcome per fault kind.
#[derive(Debug, Clone, Default)]
pub struct KindReport {
    /// Faults injected.
    pub faults: usize,
    /// Faults with a matching event.
    pub detected: usize,
    /// Time to detect of each detected fault, intervals.
    pub ttd_intervals: Vec<f64>,
    /// Events that matched these faults (1 per fault is ideal).
    pub events: usize,
}

/// Benchmark result.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Keys simulated.
    pub keys: usize,
    /// Scored days (after warm-up).
    pub days: f64,
    /// Spans generated.
    pub spans: u64,
    /// Events opened after the warm-up.
    pub events: usize,
    /// Events matching a fault.
    pub true_events: usize,
    /// Events matching no fault.
    pub false_events: usize,
    /// False events on keys that never had a fault.
    pub false_events_fault_free_keys: usize,
    /// Keys that never had a fault.
    pub fault_free_keys: usize,
    /// The first few false events (signal, key, explanation), for inspection.
    pub false_examples: Vec<String>,
    /// Per fault kind.
    pub by_kind: Vec<(FaultKind, KindReport)>,
}

impl Report {
    /// Detected faults / faults.
    pub fn recall(&self) -> f64 {
        let (d, f) = self
            .by_kind
            .iter()
            .fold((0, 0), |a, (_, k)| (a.0 + k.detected, a.1 + k.faults));
        if f == 0 {
            1.0
        } else {
            d as f64 / f as f64
        }
    }

    /// Events matching a fault / events.
    pub fn precision(&self) -> f64 {
        if self.events == 0 {
            1.0
        } else {
            self.true_events as f64 / self.events as f64
        }
    }

    /// Median time to detect over all detected faults, intervals.
    pub fn median_ttd(&self) -> f64 {
        let mut all: Vec<f64> = self
            .by_kind
            .iter()
            .flat_map(|(_, k)| k.ttd_intervals.iter().copied())
            .collect();
        median(&mut all)
    }

    /// False events per 100 fault-free keys per day.
    pub fn false_per_100_keys_day(&self) -> f64 {
        if self.fault_free_keys == 0 || self.days == 0.0 {
            return 0.0;
        }
        100.0 * self.false_events_fault_free_keys as f64 / (self.fault_free_keys as f64 * self.days)
    }

    /// Human-readable table.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str(&format!(
            "keys {}  scored days {:.2}  spans {}\n",
            self.keys, self.days, self.spans
        ));
        out.push_str(
            "fault              faults  detected  recall  median TTD (intervals)  events\n",
        );
        for (kind, k) in &self.by_kind {
            let mut t = k.ttd_intervals.clone();
            out.push_str(&format!(
                "{:<18} {:>6}  {:>8}  {:>6.3}  {:>22.1}  {:>6}\n",
                kind.as_str(),
                k.faults,
                k.detected,
                if k.faults == 0 {
                    1.0
                } else {
                    k.detected as f64 / k.faults as f64
                },
                median(&mut t),
                k.events
            ));
        }
        out.push_str(&format!(
            "events {}  matching a fault {}  false {}\n",
            self.events, self.true_events, self.false_events
        ));
        for f in &self.false_examples {
            out.push_str(&format!("  false: {f}\n"));
        }
        out.push_str(&format!(
            "recall {:.3}  precision {:.3}  median TTD {:.1} intervals  false alerts per 100 fault-free keys per day {:.2}\n",
            self.recall(),
            self.precision(),
            self.median_ttd(),
            self.false_per_100_keys_day()
        ));
        out
    }
}

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn make_keys(p: &BenchParams, rng: &mut StdRng) -> Vec<Key> {
    let services = [
        "frontend", "cart", "checkout", "payment", "catalog", "search", "auth",
    ];
    let n_faulty = (p.keys as f64 * p.faulty_share).round() as usize;
    (0..p.keys)
        .map(|i| {
            let bimodal = rng.random_bool(0.3);
            let fault = (i < n_faulty).then(|| {
                let kind = FaultKind::ALL[i % FaultKind::ALL.len()];
                let (len_s, size) = match kind {
                    FaultKind::Latency => (rng.random_range(300..900), rng.random_range(2.0..5.0)),
                    FaultKind::ErrorBurst => {
                        (rng.random_range(300..900), rng.random_range(0.05..0.20))
                    }
                    FaultKind::ThroughputDrop => {
                        (rng.random_range(300..900), rng.random_range(0.1..0.5))
                    }
                    FaultKind::SlowLeak => (2_400, 0.0),
                    FaultKind::LevelShift => (u64::MAX / 4, 2.0),
                };
                // Start anywhere in the scored part, leaving room for the fault.
                let room = p.duration_s.saturating_sub(len_s.min(p.duration_s / 2));
                let start_s = p.warmup_s + rng.random_range(0..room.max(1));
                Fault {
                    kind,
                    start_s,
                    end_s: start_s.saturating_add(len_s),
                    size,
                }
            });
            Key {
                service: services[i % services.len()].to_string(),
                name: format!("op-{i}"),
                // Log-uniform over mean_rate / 5 .. mean_rate * 5.
                rate: p.mean_rate * (rng.random_range(-1.0f64..1.0) * 5f64.ln()).exp(),
                phase: rng.random_range(0.0..std::f64::consts::TAU),
                median_ms: (rng.random_range(1.0f64..300.0f64.ln())).exp(),
                sigma: rng.random_range(0.2..0.6),
                slow_share: if bimodal {
                    rng.random_range(0.05..0.2)
                } else {
                    0.0
                },
                slow_factor: rng.random_range(3.0..8.0),
                error_rate: if rng.random_bool(0.5) {
                    rng.random_range(0.0..0.01)
                } else {
                    0.0
                },
                fault,
            }
        })
        .collect()
}

/// Runs the benchmark; `progress` is called with the share done.
pub fn run(p: &BenchParams, mut progress: impl FnMut(f64)) -> Report {
    let mut rng = StdRng::seed_from_u64(p.seed);
    let keys = make_keys(p, &mut rng);
    let mut det = SpanDetector::new(SpanParams {
        interval_ns: p.interval_ns,
        max_keys: p.keys + 1,
        ..SpanParams::default()
    });
    let t0_s: u64 = 1_700_000_000 - 1_700_000_000 % DAY_S;
    let total_s = p.warmup_s + p.duration_s;
    let interval_s = (p.interval_ns / S).max(1);
    // Opened events with the time they were emitted.
    let mut opened: Vec<(AnomalyEvent, u64)> = Vec::new();
    let mut events = Vec::new();
    let mut spans = 0u64;
    let mut trace = [0u8; 16];
    for s in 0..total_s {
        for k in &keys {
            let rate = k.rate_at(s);
            let n = if rate > 0.0 {
                Poisson::new(rate).map_or(0.0, |d| d.sample(&mut rng)) as u64
            } else {
                0
            };
            let factor = k.latency_factor(s);
            let err = k.error_rate_at(s);
            for j in 0..n {
                let slow = k.slow_share > 0.0 && rng.random_bool(k.slow_share);
                let median = k.median_ms * factor * if slow { k.slow_factor } else { 1.0 };
                let ms =
                    LogNormal::new(median.ln(), k.sigma).map_or(median, |d| d.sample(&mut rng));
                let end_ns = (t0_s + s) * S + (j * S) / n.max(1);
                trace[..8].copy_from_slice(&spans.to_le_bytes());
                det.observe(&SpanObs {
                    service: &k.service,
                    name: &k.name,
                    kind: 2,
                    end_ns,
                    duration_ns: (ms * 1e6) as u64,
                    is_error: err > 0.0 && rng.random_bool(err.min(1.0)),
                    trace_id: &trace,
                });
                spans += 1;
            }
        }
        if (s + 1) % interval_s == 0 {
            // Every interval that ended by now is judged (quiet keys too).
            det.tick((t0_s + s + 1) * S);
        }
        det.drain_events(&mut events);
        for e in events.drain(..) {
            if e.status == EventStatus::Opened {
                opened.push((e, s + 1));
            }
        }
        if s % 3_600 == 0 {
            progress(s as f64 / total_s as f64);
        }
    }
    progress(1.0);
    evaluate(p, &keys, &opened, t0_s, spans)
}

fn evaluate(
    p: &BenchParams,
    keys: &[Key],
    opened: &[(AnomalyEvent, u64)],
    t0_s: u64,
    spans: u64,
) -> Report {
    let interval_s = (p.interval_ns / S).max(1) as f64;
    let by_name: HashMap<&str, &Key> = keys.iter().map(|k| (k.name.as_str(), k)).collect();
    let mut by_kind: Vec<(FaultKind, KindReport)> = FaultKind::ALL
        .iter()
        .map(|k| (*k, KindReport::default()))
        .collect();
    let mut first_detect: HashMap<&str, u64> = HashMap::new();
    let mut r = Report {
        keys: keys.len(),
        days: p.duration_s as f64 / DAY_S as f64,
        spans,
        fault_free_keys: keys.iter().filter(|k| k.fault.is_none()).count(),
        ..Report::default()
    };
    let total_s = p.warmup_s + p.duration_s;
    for (e, emitted_s) in opened {
        let start_s = e.start_ns / S - t0_s;
        if start_s < p.warmup_s {
            continue;
        }
        r.events += 1;
        let key = by_name[e.name.as_str()];
        // An event matches a fault when it starts from one interval before
        // the fault to three intervals after its end (detection may lag).
        let matched = key.fault.as_ref().filter(|f| {
            let end = f.end_s.min(total_s);
            start_s + interval_s as u64 >= f.start_s && start_s <= end + 3 * interval_s as u64
        });
        match matched {
            Some(f) => {
                r.true_events += 1;
                if let Some((_, k)) = by_kind.iter_mut().find(|(kind, _)| *kind == f.kind) {
                    k.events += 1;
                }
                first_detect
                    .entry(key.name.as_str())
                    .and_modify(|t| *t = (*t).min(*emitted_s))
                    .or_insert(*emitted_s);
            }
            None => {
                r.false_events += 1;
                if r.false_examples.len() < 10 {
                    r.false_examples.push(format!(
                        "{} {} at +{}s (score {:.0}): {}",
                        e.signal.as_str(),
                        e.name,
                        start_s,
                        e.score,
                        e.explanation
                    ));
                }
                if key.fault.is_none() {
                    r.false_events_fault_free_keys += 1;
                }
            }
        }
    }
    for k in keys {
        let Some(f) = &k.fault else { continue };
        if f.start_s >= total_s {
            continue;
        }
        let slot = &mut by_kind
            .iter_mut()
            .find(|(kind, _)| *kind == f.kind)
            .expect("every kind has a slot")
            .1;
        slot.faults += 1;
        if let Some(t) = first_detect.get(k.name.as_str()) {
            slot.detected += 1;
            slot.ttd_intervals
                .push((t.saturating_sub(f.start_s)) as f64 / interval_s);
        }
    }
    r.by_kind = by_kind;
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    /// CI smoke of the benchmark (small sizes; the full run is in BENCHMARKS.md).
    #[test]
    fn smoke_run_finds_every_kind_of_fault_without_false_alerts() {
        let p = BenchParams {
            keys: 10,
            duration_s: 3 * 3_600,
            mean_rate: 5.0,
            seed: 7,
            ..BenchParams::default()
        };
        let r = run(&p, |_| {});
        println!("{}", r.render());
        assert_eq!(r.by_kind.iter().map(|(_, k)| k.faults).sum::<usize>(), 5);
        for (kind, k) in &r.by_kind {
            assert_eq!(
                k.detected,
                k.faults,
                "{} missed\n{}",
                kind.as_str(),
                r.render()
            );
        }
        assert_eq!(r.false_events, 0, "{}", r.render());
        assert!(r.median_ttd() <= 2.5, "{}", r.render());
    }

    #[test]
    fn faults_are_labelled_and_placed_after_warmup() {
        let p = BenchParams {
            keys: 20,
            duration_s: 7_200,
            ..BenchParams::default()
        };
        let mut rng = StdRng::seed_from_u64(3);
        let keys = make_keys(&p, &mut rng);
        let faulty: Vec<_> = keys.iter().filter_map(|k| k.fault.as_ref()).collect();
        assert_eq!(faulty.len(), 10);
        for f in faulty {
            assert!(f.start_s >= p.warmup_s);
            assert!(f.start_s < p.warmup_s + p.duration_s);
        }
    }
}
