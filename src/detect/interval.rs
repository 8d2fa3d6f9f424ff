//! Interval-level judgement of a span key, and the anomaly events made from it.
//!
//! Each span key accumulates what happened in the current interval (default
//! 10 s): spans, errors, and how many spans were above the key's baseline p99
//! and median *at the moment they arrived*. When the interval closes, six
//! tests are run on it, each on the interval alone and on the last three
//! intervals together (a small, steady change adds up over three intervals):
//!
//! | signal | test | null model |
//! |---|---|---|
//! | latency p99 | spans above the baseline p99 | Binomial(n, 0.02): twice the nominal share is tolerated |
//! | latency p50 | spans above the baseline median | Binomial(n, 0.6): 10 points of tolerance |
//! | latency drift | mean ln(duration) vs its 6-hour level, beyond 10 % | normal, scatter learned from calm intervals |
//! | errors | error spans | Binomial(n, baseline error rate) |
//! | throughput drop / spike | spans in the interval | quasi-Poisson around an EWMA of counts |
//!
//! The smallest p-value, multiplied by the number of tests (Bonferroni), is
//! mapped to a 0–100 score with the same scale as every other score. The
//! tests compare the key against its own history, so they need no
//! per-key threshold and a score means the same rarity on every key.
//!
//! An **event** opens when an interval scores at least `OPEN_SCORE`, stays
//! open while intervals keep scoring at least `ANOMALOUS_SCORE`, and closes
//! after `CLOSE_AFTER` calm intervals. A lasting change is alerted once: the
//! latency baseline learns it slowly (see `span::UNUSUAL_WEIGHT`), and a
//! throughput level that has held for `ACCEPT_AFTER` intervals becomes the
//! new baseline and closes the event.

use statrs::distribution::{DiscreteCDF, Poisson};

use super::rate::binomial_sf;
use super::{score_from_tail_probability, Severity, ANOMALOUS_SCORE};

/// Score an interval needs to open an event. With twelve tests per interval and
/// 8,640 intervals a day, a key whose traffic follows its null model opens
/// a false event at most about once in 100 days at this level (p ≤ 10^-5.8
/// after the Bonferroni factor); the trace-fault benchmark measures it.
pub const OPEN_SCORE: f32 = 80.0;
/// Calm intervals (score below `ANOMALOUS_SCORE`) that close an open event:
/// a burst that dips for a few intervals stays one event.
pub const CLOSE_AFTER: u8 = 6;
/// Intervals after which an open event accepts the new level: a throughput
/// level becomes the baseline at once; a latency level is then learned at
/// the normal rate (see `learning`).
pub const ACCEPT_AFTER: u32 = 60;
/// Intervals after a close within which the same signal continues the
/// closed event instead of opening a new one (a flapping fault is one event).
pub const REOPEN_WITHIN: u64 = 30;
/// Trace ids kept as exemplars per event.
pub const MAX_EXEMPLARS: usize = 3;
/// Number of tests run per interval (six signals, two windows: the Bonferroni factor).
const TESTS: f64 = 12.0;
/// Intervals of count history before throughput is judged.
const MIN_INTERVALS: u32 = 30;
/// Half-life of the throughput baseline, in intervals (30 min at 10 s).
const THROUGHPUT_HALF_LIFE: f64 = 180.0;
/// Share of spans above the baseline p99 that the latency test tolerates
/// before it counts evidence: twice the nominal 1 %. On a busy key a
/// binomial test against exactly 1 % turns the sketch's small estimation
/// errors (and the thinned extreme tail, see `span::UNUSUAL_WEIGHT`) into
/// "significant" results (the trace-fault benchmark showed 2 false events
/// per 100 keys a day at 2–3 % above p99); a real latency fault puts
/// 10–90 % of spans there.
const P99_TOLERATED: f64 = 0.02;
/// Share of spans above the baseline median tolerated by the p50 test.
const P50_TOLERATED: f64 = 0.6;
/// Half-life of the long-term latency level, in intervals (6 h at 10 s).
const LONG_HALF_LIFE: f64 = 2_160.0;
/// Slow-down against the long-term level tolerated by the drift test (10 %).
const DRIFT_TOLERATED: f64 = 0.0953;
/// Intervals in the longer window.
const WINDOW: usize = 3;
/// p-value of the interval alone below which the longer window may add its evidence.
const LEANING_P: f64 = 0.25;

/// The signal an interval-level result is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IntervalSignal {
    /// Spans slower than the baseline's upper tail.
    LatencyP99,
    /// The bulk of spans slower than the baseline median.
    LatencyP50,
    /// Mean log-duration above its long-term level (a slow leak).
    LatencyDrift,
    /// More failed spans than the baseline error rate explains.
    ErrorRate,
    /// Fewer spans than the baseline throughput.
    ThroughputDrop,
    /// More spans than the baseline throughput.
    ThroughputSpike,
}

impl IntervalSignal {
    /// Name written into events.
    pub fn as_str(self) -> &'static str {
        match self {
            IntervalSignal::LatencyP99 => "latency_p99",
            IntervalSignal::LatencyP50 => "latency_p50",
            IntervalSignal::LatencyDrift => "latency_drift",
            IntervalSignal::ErrorRate => "error_rate",
            IntervalSignal::ThroughputDrop => "throughput_drop",
            IntervalSignal::ThroughputSpike => "throughput_spike",
        }
    }
}

/// What one interval (or window) held.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
struct Counts {
    spans: u32,
    errors: u32,
    above_p99: u32,
    above_p50: u32,
    /// Spans that had a baseline to compare with (not cold start).
    judged: u32,
    /// Sum of ln(duration in µs) over all spans.
    log_sum: f64,
}

impl Counts {
    fn add(&mut self, o: &Counts) {
        self.spans += o.spans;
        self.errors += o.errors;
        self.above_p99 += o.above_p99;
        self.above_p50 += o.above_p50;
        self.judged += o.judged;
        self.log_sum += o.log_sum;
    }
}

/// A span as the interval accumulator sees it.
#[derive(Debug, Clone, Copy)]
pub struct IntervalObs<'a> {
    /// End time of the span, ns.
    pub end_ns: u64,
    /// Baseline upper-tail fraction of its duration (`None` in cold start).
    pub tail_fraction: Option<f64>,
    /// The span failed.
    pub is_error: bool,
    /// Span-level score (picks exemplars).
    pub score: f32,
    /// Trace id (16 bytes, or empty).
    pub trace_id: &'a [u8],
    /// Duration, µs.
    pub duration_us: f64,
}

/// An event that is open on a key.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct OpenEvent {
    id: u64,
    signal: IntervalSignal,
    start_ns: u64,
    last_anomalous_end_ns: u64,
    max_score: f32,
    sum_score: f32,
    intervals: u32,
    calm: u8,
    /// Mean count per interval while open (for accepting a throughput level).
    count_sum: f64,
    observed: f64,
    baseline: f64,
    explanation: String,
}

/// What happened to an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventStatus {
    /// The event started in this interval.
    Opened,
    /// The event is still going on (emitted when its score rises).
    Updated,
    /// The event ended (`end_ns` is set). An `Updated` with the same id
    /// may follow when the trouble returns within `REOPEN_WITHIN` intervals.
    Closed,
}

/// An anomaly event on a span key: a stretch of anomalous intervals.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct AnomalyEvent {
    /// Stable id (key, signal, start): updates of one event share it.
    pub id: u64,
    /// Opened, updated or closed.
    pub status: EventStatus,
    /// The key's service.
    pub service: String,
    /// The key's span name.
    pub name: String,
    /// The key's span kind.
    pub kind: i32,
    /// What is anomalous.
    pub signal: IntervalSignal,
    /// Start of the first anomalous interval, ns.
    pub start_ns: u64,
    /// End of the last anomalous interval, ns (set when closed).
    pub end_ns: Option<u64>,
    /// Highest interval score so far.
    pub score: f32,
    /// Sum of the interval scores so far.
    pub score_sum: f32,
    /// Band of `score`.
    pub severity: Severity,
    /// One line: signal, observed value, baseline, factor.
    pub explanation: String,
    /// Observed value of the signal in the worst interval.
    pub observed: f64,
    /// Baseline value of the signal then.
    pub baseline: f64,
    /// Trace ids of the slowest or failed spans of the event.
    pub exemplars: Vec<[u8; 16]>,
    /// The event was closed because the new level became the baseline.
    pub learned: bool,
}

/// Per-key interval state (part of the key's detector state; ~300 bytes).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct IntervalState {
    start_ns: u64,
    cur: Counts,
    /// The previous intervals, newest first.
    prev: [Counts; WINDOW - 1],
    max_duration_us: f64,
    exemplars: Vec<([u8; 16], f32)>,
    /// EWMA of spans per interval, and of its squared deviation.
    rate_mean: f64,
    rate_var: f64,
    intervals: u32,
    /// Long-term level of ln(duration): EWMA of calm intervals' means, and
    /// the per-span variance implied by how those means scatter.
    long_log_mean: f64,
    long_log_var: f64,
    long_intervals: u32,
    open: Option<OpenEvent>,
    /// The last closed event: if the same signal turns anomalous again
    /// within `REOPEN_WITHIN` intervals, that event continues.
    closed: Option<OpenEvent>,
}

/// One test's outcome.
#[derive(Debug, Clone, Copy)]
struct TestResult {
    signal: IntervalSignal,
    p: f64,
    observed: f64,
    baseline: f64,
}

impl IntervalState {
    /// Continues after a gap (restart, trained history): the interval in
    /// progress and the gap are not judged; baselines and an open event stay.
    pub fn resume(&mut self) {
        self.start_ns = 0;
        self.cur = Counts::default();
        self.prev = [Counts::default(); WINDOW - 1];
        self.max_duration_us = 0.0;
    }

    /// Start of the current interval, ns (0 before the first span).
    pub fn start_ns(&self) -> u64 {
        self.start_ns
    }

    /// True while a latency event has lasted `ACCEPT_AFTER` intervals: the
    /// new level is then learned like normal traffic, so a lasting change
    /// (a deploy) is alerted once and becomes the normal within about two
    /// half-lives instead of flapping for an hour.
    pub fn learning(&self) -> bool {
        self.open
            .as_ref()
            .is_some_and(|e| family(e.signal) == 0 && e.intervals >= ACCEPT_AFTER)
    }

    /// True when this key's latency looks shifted right now: a latency event
    /// is open, or at least 10 % of the judged spans of this and the previous
    /// interval (at least 10 spans) were above the baseline p99, ten times
    /// the expected share. Spans above p99 are then kept out of the
    /// baseline even when their own score is low: otherwise the lower edge of
    /// a shifted distribution enters at full weight, raises the baseline's
    /// maximum, and the next spans look ordinary (a ratchet that learned a 6×
    /// slowdown in three seconds on a key with a few hundred spans of history).
    pub fn latency_suspect(&self) -> bool {
        if self.open.as_ref().is_some_and(|e| family(e.signal) == 0) {
            return true;
        }
        let judged = self.cur.judged + self.prev[0].judged;
        let above = self.cur.above_p99 + self.prev[0].above_p99;
        judged >= 10 && above * 10 >= judged
    }

    /// Adds a span to the current interval. Call `close_until` first so that
    /// a span of a new interval closes the old one.
    pub fn add(&mut self, o: &IntervalObs<'_>) {
        self.cur.spans += 1;
        if o.is_error {
            self.cur.errors += 1;
        }
        if let Some(tail) = o.tail_fraction {
            self.cur.judged += 1;
            if tail < 0.01 {
                self.cur.above_p99 += 1;
            }
            if tail < 0.5 {
                self.cur.above_p50 += 1;
            }
        }
        self.cur.log_sum += o.duration_us.max(1.0).ln();
        if o.duration_us > self.max_duration_us {
            self.max_duration_us = o.duration_us;
        }
        if o.trace_id.len() == 16 && (o.score > 0.0 || o.is_error) {
            let mut id = [0u8; 16];
            id.copy_from_slice(o.trace_id);
            let rank = o.score + if o.is_error { 1.0 } else { 0.0 };
            if self.exemplars.len() < MAX_EXEMPLARS {
                self.exemplars.push((id, rank));
            } else if let Some(min) = self
                .exemplars
                .iter_mut()
                .min_by(|a, b| a.1.total_cmp(&b.1))
                .filter(|m| m.1 < rank)
            {
                *min = (id, rank);
            }
        }
    }

    /// Closes every interval that ended at or before `now_ns` (empty ones
    /// too, so a key that stopped receiving spans shows a throughput drop)
    /// and appends the resulting events. `error_rate` is the key's baseline
    /// error rate; `key_id` and `label` identify the key in events.
    #[allow(clippy::too_many_arguments)]
    pub fn close_until(
        &mut self,
        now_ns: u64,
        interval_ns: u64,
        error_rate: f64,
        key_id: u64,
        label: (&str, &str, i32),
        out: &mut Vec<AnomalyEvent>,
    ) {
        let interval_ns = interval_ns.max(1);
        if self.start_ns == 0 {
            self.start_ns = now_ns - now_ns % interval_ns;
            return;
        }
        // At most one day of empty intervals is judged after a long silence;
        // the rest are skipped (the key was idle, not dropping).
        let mut budget = (86_400_000_000_000 / interval_ns).max(1);
        while now_ns >= self.start_ns + interval_ns && budget > 0 {
            budget -= 1;
            self.close_one(interval_ns, error_rate, key_id, label, out);
            self.start_ns += interval_ns;
        }
        if now_ns >= self.start_ns + interval_ns {
            self.start_ns = now_ns - now_ns % interval_ns;
        }
    }

    fn close_one(
        &mut self,
        interval_ns: u64,
        error_rate: f64,
        key_id: u64,
        label: (&str, &str, i32),
        out: &mut Vec<AnomalyEvent>,
    ) {
        let end_ns = self.start_ns + interval_ns;
        let cur = std::mem::take(&mut self.cur);
        let mut window = cur;
        for p in &self.prev {
            window.add(p);
        }
        let mut best: Option<TestResult> = None;
        // The p-value of each signal on the interval alone: the window may
        // only add evidence to a signal the current interval leans towards,
        // so an event ends with the anomaly, not two intervals later.
        let mut current_p = [1.0f64; 6];
        let mut consider = |t: TestResult, windowed: bool| {
            let slot = &mut current_p[t.signal as usize];
            if !windowed {
                *slot = t.p;
            } else if *slot >= LEANING_P {
                return;
            }
            if best.is_none_or(|b| t.p < b.p) {
                best = Some(t);
            }
        };
        for (c, k) in [(&cur, 1.0), (&window, WINDOW as f64)] {
            let windowed = k > 1.0;
            let mut consider = |t: TestResult| consider(t, windowed);
            if c.judged > 0 {
                consider(TestResult {
                    signal: IntervalSignal::LatencyP99,
                    p: binomial_sf(c.above_p99 as u64, c.judged as u64, P99_TOLERATED),
                    observed: c.above_p99 as f64 / c.judged as f64,
                    baseline: 0.01,
                });
                consider(TestResult {
                    signal: IntervalSignal::LatencyP50,
                    p: binomial_sf(c.above_p50 as u64, c.judged as u64, P50_TOLERATED),
                    observed: c.above_p50 as f64 / c.judged as f64,
                    baseline: 0.5,
                });
            }
            if c.spans > 0 && self.long_intervals >= MIN_INTERVALS {
                let mean = c.log_sum / c.spans as f64;
                let se = (self.long_log_var / c.spans as f64).sqrt().max(1e-9);
                let z = (mean - self.long_log_mean - DRIFT_TOLERATED) / se;
                consider(TestResult {
                    signal: IntervalSignal::LatencyDrift,
                    p: 0.5 * statrs::function::erf::erfc(z / std::f64::consts::SQRT_2),
                    observed: (mean - self.long_log_mean).exp(),
                    baseline: 1.0,
                });
            }
            if c.errors > 0 && self.intervals >= MIN_INTERVALS {
                consider(TestResult {
                    signal: IntervalSignal::ErrorRate,
                    p: binomial_sf(c.errors as u64, c.spans as u64, error_rate),
                    observed: c.errors as f64 / c.spans as f64,
                    baseline: error_rate,
                });
            }
            if self.intervals >= MIN_INTERVALS {
                let (drop, spike) = self.throughput_tails(c.spans, k);
                let expected = self.rate_mean * k;
                consider(TestResult {
                    signal: IntervalSignal::ThroughputDrop,
                    p: drop,
                    observed: c.spans as f64 / k,
                    baseline: expected / k,
                });
                consider(TestResult {
                    signal: IntervalSignal::ThroughputSpike,
                    p: spike,
                    observed: c.spans as f64 / k,
                    baseline: expected / k,
                });
            }
        }
        let score = best.map_or(0.0, |b| score_from_tail_probability(b.p * TESTS));
        self.track_event(score, best, &cur, end_ns, key_id, label, out);
        // Learn the throughput of calm intervals only, so an outage is not learned.
        if score < ANOMALOUS_SCORE {
            self.learn_rate(cur.spans as f64);
            self.learn_level(&cur);
        } else if self.learning() && cur.spans > 0 {
            // A latency level that held is the new normal for the drift test too.
            self.long_log_mean = cur.log_sum / cur.spans as f64;
        }
        self.prev.rotate_right(1);
        self.prev[0] = cur;
        self.max_duration_us = 0.0;
        if self.open.is_none() {
            self.exemplars.clear();
        }
    }

    /// (P(X ≤ n), P(X ≥ n)) for the span count `n` of `k` intervals under a
    /// quasi-Poisson model: counts are divided by the observed dispersion
    /// (variance / mean, at least 1) so bursty traffic is not over-alerted.
    fn throughput_tails(&self, n: u32, k: f64) -> (f64, f64) {
        let mean = self.rate_mean.max(0.0);
        if mean < 0.5 {
            return (1.0, 1.0);
        }
        let dispersion = (self.rate_var / mean).max(1.0);
        let lambda = mean * k / dispersion;
        let x = n as f64 / dispersion;
        let Ok(pois) = Poisson::new(lambda) else {
            return (1.0, 1.0);
        };
        let lo = pois.cdf(x.floor() as u64);
        let hi = if x.ceil() < 1.0 {
            1.0
        } else {
            pois.sf(x.ceil() as u64 - 1)
        };
        (lo, hi)
    }

    fn learn_level(&mut self, cur: &Counts) {
        if cur.spans == 0 {
            return;
        }
        let n = cur.spans as f64;
        let mean = cur.log_sum / n;
        self.long_intervals = self.long_intervals.saturating_add(1);
        let alpha = if (self.long_intervals as f64) < LONG_HALF_LIFE {
            1.0 / self.long_intervals as f64
        } else {
            1.0 - 0.5f64.powf(1.0 / LONG_HALF_LIFE)
        };
        let d = mean - self.long_log_mean;
        if self.long_intervals == 1 {
            self.long_log_mean = mean;
            return;
        }
        self.long_log_mean += alpha * d;
        // n·d² estimates the per-span variance (sampling and interval-to-interval scatter).
        self.long_log_var = (1.0 - alpha) * self.long_log_var + alpha * n * d * d;
    }

    fn learn_rate(&mut self, count: f64) {
        self.intervals = self.intervals.saturating_add(1);
        let alpha = if (self.intervals as f64) < THROUGHPUT_HALF_LIFE {
            1.0 / self.intervals as f64
        } else {
            1.0 - 0.5f64.powf(1.0 / THROUGHPUT_HALF_LIFE)
        };
        let d = count - self.rate_mean;
        self.rate_mean += alpha * d;
        self.rate_var = (1.0 - alpha) * (self.rate_var + alpha * d * d);
    }

    #[allow(clippy::too_many_arguments)]
    fn track_event(
        &mut self,
        score: f32,
        best: Option<TestResult>,
        cur: &Counts,
        end_ns: u64,
        key_id: u64,
        label: (&str, &str, i32),
        out: &mut Vec<AnomalyEvent>,
    ) {
        let start_ns = self.start_ns;
        match (&mut self.open, best) {
            (None, Some(b))
                if score >= OPEN_SCORE
                    && self.closed.as_ref().is_some_and(|c| {
                        family(c.signal) == family(b.signal)
                            && start_ns.saturating_sub(c.last_anomalous_end_ns)
                                <= REOPEN_WITHIN * (end_ns - start_ns)
                    }) =>
            {
                let mut ev = self.closed.take().expect("checked above");
                ev.calm = 0;
                ev.intervals += 1;
                ev.sum_score += score;
                ev.count_sum += cur.spans as f64;
                ev.last_anomalous_end_ns = end_ns;
                if score > ev.max_score {
                    ev.max_score = score;
                    ev.observed = b.observed;
                    ev.baseline = b.baseline;
                    ev.explanation = explain(&b, cur, self.max_duration_us, label.1);
                }
                self.open = Some(ev);
                out.push(self.event(EventStatus::Updated, None, label, false));
            }
            (None, Some(b)) if score >= OPEN_SCORE => {
                let id = super::keys::key_hash(&[
                    &key_id.to_le_bytes(),
                    b.signal.as_str().as_bytes(),
                    &start_ns.to_le_bytes(),
                ]);
                let mut ev = OpenEvent {
                    id,
                    signal: b.signal,
                    start_ns,
                    last_anomalous_end_ns: end_ns,
                    max_score: score,
                    sum_score: score,
                    intervals: 1,
                    calm: 0,
                    count_sum: cur.spans as f64,
                    observed: b.observed,
                    baseline: b.baseline,
                    explanation: String::new(),
                };
                ev.explanation = explain(&b, cur, self.max_duration_us, label.1);
                self.open = Some(ev);
                out.push(self.event(EventStatus::Opened, None, label, false));
            }
            (Some(ev), _) if score >= ANOMALOUS_SCORE => {
                ev.calm = 0;
                ev.intervals += 1;
                ev.sum_score += score;
                ev.count_sum += cur.spans as f64;
                ev.last_anomalous_end_ns = end_ns;
                let rose = score > ev.max_score;
                if rose {
                    ev.max_score = score;
                    if let Some(b) = best {
                        ev.observed = b.observed;
                        ev.baseline = b.baseline;
                        ev.explanation = explain(&b, cur, self.max_duration_us, label.1);
                    }
                }
                let is_throughput = matches!(
                    ev.signal,
                    IntervalSignal::ThroughputDrop | IntervalSignal::ThroughputSpike
                );
                if is_throughput && ev.intervals >= ACCEPT_AFTER {
                    // The level held: it is the new normal.
                    let level = ev.count_sum / ev.intervals as f64;
                    let end = ev.last_anomalous_end_ns;
                    self.rate_mean = level;
                    self.rate_var = level;
                    self.prev = [Counts::default(); WINDOW - 1];
                    out.push(self.event(EventStatus::Closed, Some(end), label, true));
                    self.open = None;
                    self.closed = None;
                } else if rose {
                    out.push(self.event(EventStatus::Updated, None, label, false));
                }
            }
            (Some(ev), _) => {
                ev.calm += 1;
                if ev.calm >= CLOSE_AFTER {
                    let end = ev.last_anomalous_end_ns;
                    let learned = self.learning();
                    out.push(self.event(EventStatus::Closed, Some(end), label, learned));
                    self.closed = self.open.take();
                }
            }
            _ => {}
        }
    }

    fn event(
        &self,
        status: EventStatus,
        end_ns: Option<u64>,
        label: (&str, &str, i32),
        learned: bool,
    ) -> AnomalyEvent {
        let ev = self
            .open
            .as_ref()
            .expect("event() is called with an open event");
        let mut exemplars: Vec<_> = self.exemplars.clone();
        exemplars.sort_by(|a, b| b.1.total_cmp(&a.1));
        let mut explanation = ev.explanation.clone();
        if learned {
            explanation.push_str("; the new level held and is now the baseline");
        }
        AnomalyEvent {
            id: ev.id,
            status,
            service: label.0.to_string(),
            name: label.1.to_string(),
            kind: label.2,
            signal: ev.signal,
            start_ns: ev.start_ns,
            end_ns,
            score: ev.max_score,
            score_sum: ev.sum_score,
            severity: Severity::of(ev.max_score),
            explanation,
            observed: ev.observed,
            baseline: ev.baseline,
            exemplars: exemplars.into_iter().map(|e| e.0).collect(),
            learned,
        }
    }

    /// Approximate heap memory of this state, bytes.
    pub fn heap_bytes(&self) -> usize {
        self.exemplars.capacity() * std::mem::size_of::<([u8; 16], f32)>()
            + self.open.as_ref().map_or(0, |e| e.explanation.capacity())
            + self.closed.as_ref().map_or(0, |e| {
                std::mem::size_of::<OpenEvent>() + e.explanation.capacity()
            })
    }
}

/// Signals that describe the same trouble (both latency tests).
fn family(s: IntervalSignal) -> u8 {
    match s {
        IntervalSignal::LatencyP99 | IntervalSignal::LatencyP50 | IntervalSignal::LatencyDrift => 0,
        IntervalSignal::ErrorRate => 1,
        IntervalSignal::ThroughputDrop => 2,
        IntervalSignal::ThroughputSpike => 3,
    }
}

fn explain(b: &TestResult, cur: &Counts, max_duration_us: f64, subject: &str) -> String {
    let factor = if b.baseline > 0.0 {
        b.observed / b.baseline
    } else {
        0.0
    };
    match b.signal {
        IntervalSignal::LatencyP99 => format!(
            "{:.0}% of {subject} spans above the baseline p99 (expected 1%), {factor:.1}×; slowest {:.1} ms",
            b.observed * 100.0,
            max_duration_us / 1000.0
        ),
        IntervalSignal::LatencyP50 => format!(
            "{:.0}% of {subject} spans above the baseline median (expected 50%); slowest {:.1} ms",
            b.observed * 100.0,
            max_duration_us / 1000.0
        ),
        IntervalSignal::ErrorRate => format!(
            "error rate of {subject} {:.1}% ({} of {} spans) vs baseline {:.2}%, {factor:.1}×",
            b.observed * 100.0,
            cur.errors,
            cur.spans,
            b.baseline * 100.0
        ),
        IntervalSignal::LatencyDrift => format!(
            "mean duration of {subject} {factor:.2}× its level of the last hours (tolerated 1.10×); slowest {:.1} ms",
            max_duration_us / 1000.0
        ),
        IntervalSignal::ThroughputDrop => format!(
            "throughput of {subject} {:.0} spans per interval vs baseline {:.0}, {factor:.2}×",
            b.observed, b.baseline
        ),
        IntervalSignal::ThroughputSpike => format!(
            "throughput of {subject} {:.0} spans per interval vs baseline {:.0}, {factor:.1}×",
            b.observed, b.baseline
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;
    const IV: u64 = 10 * S;

    fn obs(t: u64, tail: f64, err: bool) -> IntervalObs<'static> {
        IntervalObs {
            end_ns: t,
            tail_fraction: Some(tail),
            is_error: err,
            score: 0.0,
            trace_id: &[7u8; 16],
            duration_us: 1000.0,
        }
    }

    /// Feeds `intervals` intervals of `per` spans each built by `f(i, j)`.
    fn run(
        st: &mut IntervalState,
        t0: u64,
        intervals: u64,
        per: u64,
        mut f: impl FnMut(u64, u64) -> (f64, bool),
        out: &mut Vec<AnomalyEvent>,
    ) -> u64 {
        let mut t = t0;
        for i in 0..intervals {
            for j in 0..per {
                t = t0 + i * IV + (j * IV) / per.max(1);
                st.close_until(t, IV, 0.01, 1, ("svc", "op", 2), out);
                let (tail, err) = f(i, j);
                st.add(&obs(t, tail, err));
            }
            if per == 0 {
                t = t0 + i * IV;
                st.close_until(t, IV, 0.01, 1, ("svc", "op", 2), out);
            }
        }
        t
    }

    /// `intervals` calm intervals of `per` spans (uniform tail fractions, no errors).
    fn calm(
        st: &mut IntervalState,
        t0: u64,
        intervals: u64,
        per: u64,
        out: &mut Vec<AnomalyEvent>,
    ) -> u64 {
        run(
            st,
            t0,
            intervals,
            per,
            |i, j| (uniform(j, per, i), false),
            out,
        )
    }

    /// A deterministic "uniform" tail fraction: j-th of `per`, spread over (0,1).
    fn uniform(j: u64, per: u64, salt: u64) -> f64 {
        (((j * 7919 + salt * 104_729) % per) as f64 + 0.5) / per as f64
    }

    #[test]
    fn calm_traffic_opens_no_event() {
        let mut st = IntervalState::default();
        let mut out = Vec::new();
        run(
            &mut st,
            1_000 * IV,
            500,
            100,
            |i, j| (uniform(j, 100, i), (i * 100 + j) % 100 == 0),
            &mut out,
        );
        assert!(out.is_empty(), "{out:?}");
    }

    #[test]
    fn latency_shift_opens_one_event_in_the_first_interval_and_closes() {
        let mut st = IntervalState::default();
        let mut out = Vec::new();
        let t = calm(&mut st, 1_000 * IV, 100, 100, &mut out);
        assert!(out.is_empty());
        // 40% of spans above p99 for 5 intervals.
        let t0 = t - t % IV + IV;
        let t = run(
            &mut st,
            t0,
            5,
            100,
            |i, j| (if j % 5 < 2 { 0.001 } else { uniform(j, 100, i) }, false),
            &mut out,
        );
        // Closing the first fault interval opens the event.
        let opened: Vec<_> = out
            .iter()
            .filter(|e| e.status == EventStatus::Opened)
            .cloned()
            .collect();
        assert_eq!(opened.len(), 1, "{out:?}");
        assert_eq!(opened[0].signal, IntervalSignal::LatencyP99);
        assert_eq!(opened[0].start_ns, t0);
        assert_eq!(
            opened[0].exemplars.len(),
            0,
            "spans scored 0 are not exemplars"
        );
        assert!(opened[0].explanation.contains("above the baseline p99"));
        let t0 = t - t % IV + IV;
        calm(&mut st, t0, 10, 100, &mut out);
        let closed: Vec<_> = out
            .iter()
            .filter(|e| e.status == EventStatus::Closed)
            .collect();
        assert_eq!(closed.len(), 1, "{out:?}");
        assert_eq!(closed[0].end_ns, Some(t0));
        assert_eq!(closed[0].id, opened[0].id);
    }

    #[test]
    fn throughput_drop_is_seen_even_when_no_span_arrives() {
        let mut st = IntervalState::default();
        let mut out = Vec::new();
        let t = calm(&mut st, 1_000 * IV, 200, 50, &mut out);
        assert!(out.is_empty(), "{out:?}");
        let t0 = t - t % IV + IV;
        // No spans at all: ticks only.
        run(&mut st, t0, 4, 0, |_, _| (0.5, false), &mut out);
        assert!(
            out.iter()
                .any(|e| e.signal == IntervalSignal::ThroughputDrop
                    && e.status == EventStatus::Opened),
            "{out:?}"
        );
    }

    #[test]
    fn lasting_throughput_level_is_alerted_once_then_learned() {
        let mut st = IntervalState::default();
        let mut out = Vec::new();
        let t = calm(&mut st, 1_000 * IV, 200, 100, &mut out);
        let t0 = t - t % IV + IV;
        calm(&mut st, t0, (ACCEPT_AFTER as u64) * 3, 40, &mut out);
        let opened = out
            .iter()
            .filter(|e| e.status == EventStatus::Opened)
            .count();
        assert_eq!(opened, 1, "{out:?}");
        let learned: Vec<_> = out.iter().filter(|e| e.learned).collect();
        assert_eq!(learned.len(), 1, "{out:?}");
        assert!(learned[0].explanation.contains("new level held"));
    }

    #[test]
    fn error_burst_opens_an_error_event() {
        let mut st = IntervalState::default();
        let mut out = Vec::new();
        let t = run(
            &mut st,
            1_000 * IV,
            100,
            100,
            |i, j| (uniform(j, 100, i), (i * 100 + j) % 100 == 0),
            &mut out,
        );
        let t0 = t - t % IV + IV;
        run(
            &mut st,
            t0,
            3,
            100,
            |i, j| (uniform(j, 100, i), j % 10 == 0),
            &mut out,
        );
        let ev = out
            .iter()
            .find(|e| e.status == EventStatus::Opened)
            .expect("an event");
        assert_eq!(ev.signal, IntervalSignal::ErrorRate, "{ev:?}");
        assert_eq!(
            ev.exemplars.len(),
            MAX_EXEMPLARS,
            "error spans are exemplars"
        );
    }

    #[test]
    fn state_is_small() {
        let st = IntervalState::default();
        assert!(std::mem::size_of_val(&st) + st.heap_bytes() <= 400);
    }
}
