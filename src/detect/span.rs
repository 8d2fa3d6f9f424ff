//! Span detector: per (service, span name, span kind) a decaying latency
//! sketch and an error-rate baseline. Each span is scored for its own
//! duration (upper-tail probability against the sketch) and, if it failed,
//! for how unusual this interval's error count is.

use super::interval::{AnomalyEvent, IntervalObs, IntervalState};
use super::keys::{key_hash, BoundedMap, KeyHash, MapSnapshot};
use super::rate::{RateParams, RateState};
use super::sketch::DecayingSketch;
use super::{score_from_tail_probability, Explanation, Verdict};

/// Bounds of the tail exponent used past the largest value in the baseline.
/// The exponent is estimated per key from how fast the tail thins between
/// p99 and p99.9 (a Pareto tail of that slope), then clamped: at least 1 so
/// a heavy-tailed key still counts a 10× outlier as rarer, at most 10 (the
/// slope of a log-normal with σ = 0.3) so bucket rounding on a very tight
/// key cannot make a small excess look astronomically rare.
const TAIL_EXPONENT_MIN: f64 = 1.0;
const TAIL_EXPONENT_MAX: f64 = 10.0;

/// Score below which a span counts as normal and enters the baseline with
/// full weight; above it, with `UNUSUAL_WEIGHT`.
const NORMAL_SCORE: f32 = 25.0;

/// Weight of an unusual span in the latency baseline. A lasting shift is
/// learned once the shifted spans' accumulated weight makes them ordinary
/// (tail probability ≈ 1e-3): after about (2e-3 / w) × half-life / ln 2
/// when the key has a full baseline, i.e. ~5.8 half-lives at w = 0.0005
/// (about an hour at the default 10 min half-life); a key with a short
/// history adapts sooner, after about as many spans as it has seen. With
/// w = 0.05 a 6× latency fault looked normal after 20 s.
const UNUSUAL_WEIGHT: f32 = 0.0005;

/// Span detector settings.
#[derive(Debug, Clone, Copy)]
pub struct SpanParams {
    /// Half-life of the latency and error baselines, ns.
    pub half_life_ns: u64,
    /// Spans of history a key needs before its spans are scored.
    pub min_samples: u64,
    /// Judging interval for error rates, ns.
    pub interval_ns: u64,
    /// Cap on tracked keys; when full, keys idle for `idle_eviction_ns` make
    /// room, else spans of further keys share one overflow key.
    pub max_keys: usize,
    /// A key not seen for this long may be evicted to make room for a new one, ns.
    pub idle_eviction_ns: u64,
}

impl Default for SpanParams {
    fn default() -> Self {
        Self {
            half_life_ns: 600_000_000_000,
            min_samples: 50,
            interval_ns: 10_000_000_000,
            max_keys: 10_000,
            idle_eviction_ns: 3_600_000_000_000,
        }
    }
}

/// The fields of a span the detector needs.
#[derive(Debug, Clone, Copy)]
pub struct SpanObs<'a> {
    /// `service.name` of the resource.
    pub service: &'a str,
    /// Span name.
    pub name: &'a str,
    /// Span kind (OTLP enum value).
    pub kind: i32,
    /// End time, ns since the epoch (the detector's clock).
    pub end_ns: u64,
    /// Duration, ns.
    pub duration_ns: u64,
    /// Status code is ERROR.
    pub is_error: bool,
    /// Trace id (16 bytes; empty when unknown), kept as an event exemplar.
    pub trace_id: &'a [u8],
}

impl SpanObs<'_> {
    /// The detector key of this span.
    pub fn key(&self) -> KeyHash {
        key_hash(&[
            self.service.as_bytes(),
            self.name.as_bytes(),
            &self.kind.to_le_bytes(),
        ])
    }
}

/// Per-key state.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct SpanKeyState {
    latency_us: DecayingSketch,
    errors: RateState,
    last_decay_ns: u64,
    seen: u64,
    interval: IntervalState,
    service: String,
    name: String,
    kind: i32,
}

impl SpanKeyState {
    fn new(span: &SpanObs<'_>) -> Self {
        Self {
            service: span.service.to_string(),
            name: span.name.to_string(),
            kind: span.kind,
            ..Self::default()
        }
    }

    /// Prepares a restored state for a stream that continues after a gap
    /// (a restart, or history from `train`): the gap is neither decayed nor
    /// judged as empty intervals. Downtime is not evidence that the old
    /// baseline is wrong, nor a throughput drop.
    pub fn resume(&mut self) {
        self.last_decay_ns = 0;
        self.errors.resume();
        self.interval.resume();
    }

    /// Approximate memory of this key in bytes.
    pub fn memory_bytes(&self) -> usize {
        std::mem::size_of::<Self>() + self.latency_us.memory_bytes()
            - std::mem::size_of::<DecayingSketch>()
            + self.interval.heap_bytes()
            + self.service.capacity()
            + self.name.capacity()
    }

    /// Closes the intervals that ended by `now_ns` and appends their events.
    fn close_intervals(
        &mut self,
        now_ns: u64,
        key: KeyHash,
        p: &SpanParams,
        out: &mut Vec<AnomalyEvent>,
    ) {
        let rate = self.errors.baseline_rate();
        self.interval.close_until(
            now_ns,
            p.interval_ns,
            rate,
            key,
            (&self.service, &self.name, self.kind),
            out,
        );
    }

    fn decay_to(&mut self, now_ns: u64, half_life_ns: u64) {
        if self.last_decay_ns == 0 {
            self.last_decay_ns = now_ns;
            return;
        }
        // Decay in steps of 1/32 half-life: cheap, and fine-grained enough.
        let step = (half_life_ns / 32).max(1);
        if now_ns < self.last_decay_ns + step {
            return;
        }
        let elapsed = now_ns - self.last_decay_ns;
        self.latency_us
            .decay(0.5f64.powf(elapsed as f64 / half_life_ns as f64));
        self.last_decay_ns = now_ns;
    }

    /// Pareto exponent of the upper tail: one decade of probability between p99 and p99.9.
    fn tail_exponent(&self) -> f64 {
        let (Some(q99), Some(q999)) = (
            self.latency_us.quantile(0.99),
            self.latency_us.quantile(0.999),
        ) else {
            return TAIL_EXPONENT_MIN;
        };
        let gap = (q999 / q99).ln();
        if gap <= 0.0 {
            return TAIL_EXPONENT_MAX;
        }
        (std::f64::consts::LN_10 / gap).clamp(TAIL_EXPONENT_MIN, TAIL_EXPONENT_MAX)
    }

    /// The verdict on a duration, and its baseline tail fraction (share of
    /// the baseline at or above it; `None` in cold start).
    fn latency_verdict(&self, duration_us: f64, p: &SpanParams) -> (Verdict, Option<f64>) {
        let n = self.latency_us.count();
        if (n as u64) < p.min_samples {
            return (Verdict::cold_start(n as u64, p.min_samples), None);
        }
        let above = self.latency_us.count_at_or_above(duration_us);
        let fraction = above / n;
        let mut tail = (above + 0.5) / (n + 1.0);
        let max = self.latency_us.max();
        if duration_us > max && max > 0.0 {
            tail *= (max / duration_us).powf(self.tail_exponent());
        }
        let score = score_from_tail_probability(tail);
        let (quantile, q) = if score > 0.0 {
            ("p99.9", 0.999)
        } else if tail < 0.5 {
            ("p99", 0.99)
        } else {
            ("p50", 0.5)
        };
        let baseline_us = self.latency_us.quantile(q).unwrap_or(0.0);
        let verdict = Verdict::scored(
            score,
            Explanation::Latency {
                observed_ms: duration_us / 1000.0,
                quantile,
                baseline_ms: baseline_us / 1000.0,
                half_life_s: p.half_life_ns / 1_000_000_000,
            },
        );
        (verdict, Some(fraction))
    }
}

/// The span detector for one environment (or one shard of it).
#[derive(Debug)]
pub struct SpanDetector {
    params: SpanParams,
    keys: BoundedMap<SpanKeyState>,
    events: Vec<AnomalyEvent>,
}

impl SpanDetector {
    /// A detector with `params`.
    pub fn new(params: SpanParams) -> Self {
        Self {
            params,
            keys: BoundedMap::with_idle_eviction(params.max_keys, params.idle_eviction_ns),
            events: Vec::new(),
        }
    }

    /// Closes every key's intervals that ended by `now_ns` (so a key that
    /// stopped receiving spans is judged too). Call about once per interval
    /// with the current time minus a grace period for late spans.
    pub fn tick(&mut self, now_ns: u64) {
        let p = self.params;
        for (key, st) in self.keys.iter_mut() {
            st.close_intervals(now_ns, key, &p, &mut self.events);
        }
    }

    /// Moves the anomaly events produced so far into `out`.
    pub fn drain_events(&mut self, out: &mut Vec<AnomalyEvent>) {
        out.append(&mut self.events);
    }

    /// Keys evicted for being idle so far.
    pub fn evicted(&self) -> u64 {
        self.keys.evicted()
    }

    /// The detector's state, for a snapshot.
    pub fn snapshot(&self) -> MapSnapshot<&SpanKeyState> {
        self.keys.snapshot()
    }

    /// Adds the keys of a snapshot to the detector.
    pub fn restore(&mut self, snap: MapSnapshot<SpanKeyState>) {
        self.keys.restore_snapshot(snap);
    }

    /// Marks every key as continuing after a gap (see `SpanKeyState::resume`).
    pub fn resume(&mut self) {
        for st in self.keys.values_mut() {
            st.resume();
        }
    }

    /// Scores one span and learns from it.
    pub fn observe(&mut self, span: &SpanObs<'_>) -> Verdict {
        self.observe_key(span.key(), span)
    }

    /// As `observe`, with the key hash already computed (for sharding).
    pub fn observe_key(&mut self, key: KeyHash, span: &SpanObs<'_>) -> Verdict {
        let p = self.params;
        let (st, overflow) = self
            .keys
            .get_or_insert_at(key, span.end_ns, || SpanKeyState::new(span));
        // The overflow key mixes unrelated spans: it is scored per span but
        // makes no interval events.
        if !overflow {
            st.close_intervals(span.end_ns, key, &p, &mut self.events);
        }
        st.decay_to(span.end_ns, p.half_life_ns);
        st.seen += 1;
        let duration_us = span.duration_ns as f64 / 1000.0;
        let (latency, tail_fraction) = st.latency_verdict(duration_us, &p);
        let rate_params = RateParams {
            interval_ns: p.interval_ns,
            half_life_ns: p.half_life_ns,
            min_samples: p.min_samples,
        };
        let errors = st.errors.observe(span.end_ns, span.is_error, &rate_params);
        // Unusual durations are kept (mostly) out of the baseline, so an
        // outage does not become the normal.
        let unusual = latency.score >= NORMAL_SCORE
            || (tail_fraction.is_some_and(|t| t < 0.01) && st.interval.latency_suspect());
        let weight = if unusual && !st.interval.learning() {
            UNUSUAL_WEIGHT
        } else {
            1.0
        };
        st.latency_us.add(duration_us, weight);
        if !overflow {
            st.interval.add(&IntervalObs {
                end_ns: span.end_ns,
                tail_fraction,
                is_error: span.is_error,
                score: latency.score,
                trace_id: span.trace_id,
                duration_us,
            });
        }
        if span.is_error && errors.score > latency.score {
            errors
        } else {
            latency
        }
    }

    /// Number of tracked keys.
    pub fn keys(&self) -> usize {
        self.keys.len()
    }

    /// Spans routed to the overflow key so far.
    pub fn overflowed(&self) -> u64 {
        self.keys.overflowed()
    }

    /// Approximate memory of all key states in bytes.
    pub fn memory_bytes(&self) -> usize {
        self.keys.values().map(|k| k.memory_bytes() + 16).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::Severity;
    use rand::{rngs::StdRng, Rng, SeedableRng};
    use rand_distr_free::lognormal;

    const MS: u64 = 1_000_000;
    const S: u64 = 1_000_000_000;

    /// Log-normal sample without an extra crate: exp(mu + sigma * z).
    mod rand_distr_free {
        use rand::Rng;
        pub fn lognormal(rng: &mut impl Rng, median: f64, sigma: f64) -> f64 {
            // Box–Muller.
            let u1: f64 = rng.random::<f64>().max(1e-12);
            let u2: f64 = rng.random();
            let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
            median * (sigma * z).exp()
        }
    }

    fn span<'a>(name: &'a str, t: u64, dur: u64, err: bool) -> SpanObs<'a> {
        SpanObs {
            service: "cart",
            name,
            kind: 2,
            end_ns: t,
            duration_ns: dur,
            is_error: err,
            trace_id: &[],
        }
    }

    #[test]
    fn cold_start_spans_are_marked_not_scored() {
        let mut d = SpanDetector::new(SpanParams::default());
        let v = d.observe(&span("GET /cart", S, 5_000 * MS, false));
        assert_eq!(v.severity, Severity::ColdStart);
        assert_eq!(v.score, 0.0);
    }

    #[test]
    fn latency_shift_on_one_key_scores_high_and_others_stay_low() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut d = SpanDetector::new(SpanParams::default());
        let mut t = 1_700_000_000 * S;
        for _ in 0..20_000 {
            t += 10 * MS;
            for name in ["GET /cart", "GET /item"] {
                let dur = lognormal(&mut rng, 50.0, 0.3) * MS as f64;
                d.observe(&span(name, t, dur as u64, false));
            }
        }
        let (mut shifted, mut other) = (Vec::new(), Vec::new());
        for _ in 0..500 {
            t += 10 * MS;
            let slow = lognormal(&mut rng, 250.0, 0.3) * MS as f64;
            shifted.push(d.observe(&span("GET /cart", t, slow as u64, false)).score);
            let normal = lognormal(&mut rng, 50.0, 0.3) * MS as f64;
            other.push(d.observe(&span("GET /item", t, normal as u64, false)).score);
        }
        let mean = |v: &[f32]| v.iter().sum::<f32>() / v.len() as f32;
        // The first shifted spans are the clearest signal; the baseline adapts slowly afterwards.
        assert!(
            mean(&shifted[..100]) > 50.0,
            "shifted mean {}",
            mean(&shifted[..100])
        );
        let high_shifted = shifted[..100].iter().filter(|s| **s >= 50.0).count();
        assert!(
            high_shifted >= 80,
            "only {high_shifted} of 100 shifted spans scored ≥ 50"
        );
        assert!(mean(&other) < 2.0, "unshifted mean {}", mean(&other));
        let high_other = other.iter().filter(|s| **s >= 50.0).count();
        assert!(high_other <= 1, "{high_other} unshifted spans scored ≥ 50");
    }

    #[test]
    fn a_resumed_key_keeps_its_baseline_across_a_gap_and_judges_no_empty_intervals() {
        let mut rng = StdRng::seed_from_u64(5);
        let run = |d: &mut SpanDetector, rng: &mut StdRng, from: u64, n: u64| {
            let mut t = from;
            let mut last = Verdict::cold_start(0, 0);
            for _ in 0..n {
                t += 20 * MS;
                let dur = lognormal(rng, 40.0, 0.3) * MS as f64;
                last = d.observe(&span("GET /cart", t, dur as u64, false));
            }
            (t, last)
        };
        let mut d = SpanDetector::new(SpanParams::default());
        let (t, _) = run(&mut d, &mut rng, 1_700_000_000 * S, 30_000);
        let mut events = Vec::new();
        d.drain_events(&mut events);
        let snap = crate::detect::snapshot::encode_map(&d.snapshot());
        // Two hours later (a restart, or a model trained from history).
        let later = t + 7_200 * S;
        let mut cold = SpanDetector::new(SpanParams::default());
        cold.restore(crate::detect::snapshot::decode_map(&snap).expect("decodes"));
        let mut resumed = SpanDetector::new(SpanParams::default());
        resumed.restore(crate::detect::snapshot::decode_map(&snap).expect("decodes"));
        resumed.resume();
        let (_, v) = run(&mut resumed, &mut rng, later, 1);
        assert_ne!(
            v.severity,
            Severity::ColdStart,
            "the baseline survived the gap"
        );
        let (_, v) = run(&mut cold, &mut rng, later, 1);
        assert_eq!(
            v.severity,
            Severity::ColdStart,
            "without resume, two hours decay a 10-minute baseline away"
        );
        run(&mut resumed, &mut rng, later, 3_000);
        resumed.drain_events(&mut events);
        assert!(
            events.is_empty(),
            "the gap is not a throughput drop: {events:?}"
        );
    }

    #[test]
    fn a_shift_on_a_low_rate_key_is_not_learned_from_its_lower_edge() {
        // The demo's payment / Charge: ~5 spans/s, a 5-minute half-life, one
        // minute of history, then 6× slower. The lower edge of the slow
        // spans scores low on its own; it must not ratchet the baseline up.
        let mut rng = StdRng::seed_from_u64(11);
        let mut d = SpanDetector::new(SpanParams {
            half_life_ns: 300 * S,
            ..SpanParams::default()
        });
        let mut t = 1_700_000_000 * S;
        for _ in 0..300 {
            t += 200 * MS;
            let dur = lognormal(&mut rng, 90.0, 0.35) * MS as f64;
            d.observe(&span("Charge", t, dur as u64, false));
        }
        let mut scores = Vec::new();
        for _ in 0..300 {
            t += 200 * MS;
            let dur = lognormal(&mut rng, 540.0, 0.35) * MS as f64;
            scores.push(d.observe(&span("Charge", t, dur as u64, false)).score);
        }
        let late = &scores[150..];
        let high = late.iter().filter(|s| **s >= 50.0).count();
        assert!(
            high * 10 >= late.len() * 8,
            "after 30 s of the shift only {high} of {} spans still score ≥ 50",
            late.len()
        );
    }

    #[test]
    fn memory_per_key_is_bounded() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut d = SpanDetector::new(SpanParams::default());
        for i in 0..100_000u64 {
            let dur = rng.random_range(1_000..60_000_000_000u64);
            d.observe(&span("x", (i + 1) * MS, dur, false));
        }
        assert!(d.memory_bytes() <= 8 * 1024, "{} bytes", d.memory_bytes());
    }

    #[test]
    fn keys_past_the_cap_go_to_overflow() {
        let mut d = SpanDetector::new(SpanParams {
            max_keys: 10,
            ..SpanParams::default()
        });
        for i in 0..100 {
            let name = format!("op-{i}");
            d.observe(&span(&name, S + i, MS, false));
        }
        assert_eq!(d.keys(), 10);
        assert_eq!(d.overflowed(), 90);
    }
}
