//! Metric detector, per series (resource attributes + metric name + point
//! attributes):
//!
//! * a robust baseline: median and MAD of the recent values judged normal
//!   (anomalous points are kept out, so an outage does not become normal),
//!   with a spread floor of a tenth of the series' long-run magnitude;
//! * a daily profile (15-min time-of-day bins), used once two days of history
//!   exist and only while it explains the data (shrinks the spread by 30%);
//! * a weekly profile (half-hour-of-week bins), used instead of the daily one
//!   once two weeks of history exist and while its running error over about
//!   a week is the smaller (weekday/weekend patterns);
//! * recurring deviations: per time of day, the largest deviation of each
//!   of the last days; one that was notable at about this time on both of
//!   the last two days (a nightly job) becomes the unit deviations are
//!   measured in at this time of day, so it is not alerted every night;
//! * level-shift adaptation: when most of the last few points were anomalous
//!   on the same side, the baseline is replaced by them, so a new normal is
//!   alerted once and then learned; a return to the regime before the shift
//!   (the outage ended, the change was rolled back) is a recovery and is
//!   judged against that regime, not alerted as a second shift;
//! * a point surprise from the series' own tail of deviations (peaks over a
//!   threshold with a generalised Pareto fit, as in SPOT), so a series that
//!   always jitters must jitter more than it ever did to alert;
//! * an anomaly-likelihood layer ([`super::likelihood`]) over the point
//!   surprises, which catches a change in how often a series surprises (more
//!   spikes than usual) that no single point shows; the score is the larger
//!   of the two;
//! * alert dedup: after an alert the series stays quiet for a while unless it
//!   gets worse, like an alerting system that groups one incident into one page.
//!
//! Cumulative sums are turned into deltas (a value below the previous one, or
//! a new start time, is a counter reset); histograms are scored on the mean
//! of the new observations.

use super::histogram::{BucketMemory, Distribution, HistogramError, HistogramObs};
use super::keys::{BoundedMap, KeyHash, MapSnapshot};
use super::likelihood::{normal_surprise, Likelihood};
use super::{Explanation, Severity, Verdict, ANOMALOUS_WEIGHT};

/// Largest baseline window, in points (bounds per-series memory).
pub const MAX_WINDOW: usize = 256;
/// Points looked back for a level shift.
const SHIFT_POINTS: usize = 12;
/// Anomalous points on one side (of `SHIFT_POINTS`) that make a level shift.
const SHIFT_QUORUM: usize = 9;
/// σ per MAD for normal data.
const MAD_TO_SIGMA: f64 = 1.4826;
/// σ per mean absolute deviation for normal data (√(π/2)).
const MEAN_ABS_TO_SIGMA: f64 = 1.2533;
/// Spread floor, relative to the series' long-run mean magnitude: changes
/// smaller than ~30% of the usual level (3 floors) are not worth an alert,
/// and a flat or mostly-zero series is not infinitely sensitive.
const SCALE_SPREAD_FLOOR: f64 = 0.1;
/// Time-of-day bins of the daily profile (15 min each).
const DAY_BINS: usize = 96;
/// History needed before the daily profile is used: two full days.
const SEASON_MIN_HISTORY_NS: u64 = 2 * 86_400 * 1_000_000_000;
/// Half-hour-of-week bins of the weekly profile.
const WEEK_BINS: usize = 336;
/// History needed before the weekly profile is used: two full weeks.
const WEEK_MIN_HISTORY_NS: u64 = 14 * 86_400 * 1_000_000_000;
/// Effective memory of a weekly bin, in points (one visit at 5-min sampling).
const WEEK_MEMORY: u8 = 6;
/// Points a bin needs before its offset is used.
const SEASON_MIN_PER_BIN: u8 = 2;
/// Effective memory of a bin, in visits (about days at 15-min sampling or slower).
const SEASON_MEMORY: u8 = 4;
/// The daily profile is used only when it shrinks the spread at least this much.
const SEASON_GAIN: f64 = 0.7;
/// Surprise per e-fold of `100 − score`: 5/ln 2, so a surprise of 5 scores 50.
const SURPRISE_SCALE: f64 = 7.213_475_204_444_817;
/// A point rarer than 1 in 1,000 is anomalous: it feeds the likelihood and stays out of the baseline.
const POINT_ANOMALY_SURPRISE: f64 = 3.0;
/// |z| above which a deviation is a peak for the tail model (about the top
/// 5% of a normal series; SPOT starts from a high quantile such as the 98th).
const PEAK_Z: f64 = 2.0;
/// Peaks kept for the tail fit.
const MAX_PEAKS: usize = 64;
/// Peaks needed before the tail fit replaces the normal tail.
const MIN_PEAKS: usize = 8;
/// Surprise from which a point feeds the likelihood layer: 1 in 100, so
/// that a rising rate of moderately unusual points (more spikes than usual)
/// registers before any one of them is an anomaly.
const RAW_FROM_SURPRISE: f64 = 2.0;
/// Surprise a recurring deviation must have had to be treated as routine at
/// its time of day (1 in 100: notable, not noise).
const RECURRING_SURPRISE: f64 = 2.0;
/// Raw likelihood input per unit of surprise beyond `RAW_FROM_SURPRISE`
/// (a 1-in-10^5 point gives 0.63, near the 1 of an unpredicted HTM input).
const RAW_SURPRISE_SCALE: f64 = 3.0;
/// Score that opens an incident for dedup: the lower edge of the Minor band,
/// so that the first notable point of an incident is the one reported.
const DEDUP_FROM_SCORE: f32 = 25.0;
/// Factor on scores that repeat an alert during its dedup period.
const DEDUP_DAMPING: f32 = 0.25;

/// Metric detector settings.
#[derive(Debug, Clone, Copy)]
pub struct MetricParams {
    /// Points a series needs before it is scored.
    pub min_samples: u64,
    /// Baseline window, in points (at most `MAX_WINDOW`).
    pub window: u64,
    /// Cap on tracked series.
    pub max_series: usize,
    /// Points after an alert during which the series does not alert again unless it gets worse.
    pub dedup_points: u64,
    /// Long-run memory, in points, of the anomaly likelihood, the tail model
    /// and the series' magnitude.
    pub long_memory: u64,
    /// Learn a day-of-week profile (hour-of-week bins), used once two weeks
    /// of history exist.
    pub weekly: bool,
}

impl Default for MetricParams {
    fn default() -> Self {
        Self {
            min_samples: 30,
            window: 200,
            max_series: 50_000,
            // About 8 h at a 5-min interval, 17 min at 10 s.
            dedup_points: 100,
            // About 3.5 days at a 5-min interval.
            long_memory: 1000,
            weekly: true,
        }
    }
}

/// One data point, reduced to what is scored.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PointValue {
    /// A gauge value (or a delta sum), scored as it is.
    Gauge(f64),
    /// A cumulative sum; scored on the delta from the previous point.
    CumulativeSum { value: f64, start_ns: u64 },
    /// A delta sum; scored as it is.
    DeltaSum(f64),
    /// A histogram (or exponential histogram / summary): count and sum,
    /// cumulative or delta; scored on the mean of the new observations.
    Histogram {
        count: u64,
        sum: f64,
        cumulative: bool,
        start_ns: u64,
    },
    /// A value derived from a point (a histogram's quantile, see
    /// [`super::histogram`]), scored as it is; `what` names it ("p99").
    Derived { value: f64, what: &'static str },
}

/// Converts raw points into the value to score (deltas of cumulative sums, histogram means).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
struct Converter {
    prev_value: f64,
    prev_count: u64,
    prev_start_ns: u64,
    has_prev: bool,
}

impl Converter {
    /// Turns the point into the value to score; `None` when there is nothing
    /// to score yet (first point of a cumulative series, empty histogram delta).
    fn scored_value(&mut self, v: PointValue) -> Option<(f64, &'static str)> {
        match v {
            PointValue::Gauge(x) => Some((x, "value")),
            PointValue::DeltaSum(x) => Some((x, "delta")),
            PointValue::Derived { value, what } => Some((value, what)),
            PointValue::CumulativeSum { value, start_ns } => {
                let reset =
                    !self.has_prev || start_ns != self.prev_start_ns || value < self.prev_value;
                let delta = if !self.has_prev {
                    None
                } else if reset {
                    // After a reset the new cumulative value is the delta since the reset.
                    Some(value)
                } else {
                    Some(value - self.prev_value)
                };
                self.prev_value = value;
                self.prev_start_ns = start_ns;
                self.has_prev = true;
                delta.map(|d| (d, "delta"))
            }
            PointValue::Histogram {
                count,
                sum,
                cumulative,
                start_ns,
            } => {
                let (dc, ds) = if cumulative {
                    let reset =
                        !self.has_prev || start_ns != self.prev_start_ns || count < self.prev_count;
                    let first = !self.has_prev;
                    let d = if reset {
                        (count, sum)
                    } else {
                        (count - self.prev_count, sum - self.prev_value)
                    };
                    self.prev_count = count;
                    self.prev_value = sum;
                    self.prev_start_ns = start_ns;
                    self.has_prev = true;
                    if first {
                        return None;
                    }
                    d
                } else {
                    (count, sum)
                };
                if dc == 0 {
                    return None;
                }
                Some((ds / dc as f64, "mean"))
            }
        }
    }
}

/// Per-series state: bounded (see `tests::series_state_is_bounded`) and serialisable.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct SeriesState {
    conv: Converter,
    /// Recent values judged normal (a ring of at most `window` values).
    base: Vec<f64>,
    /// Indices into `base` in ascending order of value (`f64::total_cmp`),
    /// so the plain median and MAD need no selection per point; one byte
    /// each (`MAX_WINDOW` ≤ 256). Not serialised: rebuilt from `base` after
    /// a restore (see [`SeriesState::sync_order`]).
    #[serde(skip)]
    order: Vec<u8>,
    /// Time-of-day bin of each baseline value.
    base_phase: Vec<u16>,
    base_next: u32,
    seasonal: Seasonal,
    /// Hour-of-week profile, used instead of the daily one once it has two
    /// weeks of history and predicts better.
    weekly: Seasonal,
    /// Running mean absolute error of the daily and the weekly profile.
    day_err: f32,
    week_err: f32,
    /// The last `SHIFT_POINTS` values, their time-of-day bins, and on which
    /// side of the baseline they were anomalous (+1, −1; 0 when normal).
    recent: Vec<(f64, u16, i8)>,
    recent_next: u8,
    likelihood: Likelihood,
    tail: PeakTail,
    /// Largest deviations per time of day on the last days.
    recurring: Recurring,
    /// Long-run mean of |value| (the series' scale).
    scale: f64,
    /// The regime before the last level shift, while a return to it is
    /// still a recovery.
    before_shift: Option<Regime>,
    /// Points left in the current alert's dedup period.
    dedup_left: u32,
    /// Score of the alert that opened the dedup period.
    dedup_peak: f32,
    n: u64,
    /// The previous bucket counts of a cumulative histogram (only on the
    /// series keyed by `histogram::BUCKET_STATE_SUFFIX`; `None` elsewhere).
    buckets: Option<Box<BucketMemory>>,
}

impl SeriesState {
    /// Scores one point at `time_ns` and learns from it (see [`MetricDetector::observe`]).
    /// `scratch` is working memory, reused between calls.
    pub fn observe(
        &mut self,
        time_ns: u64,
        value: PointValue,
        p: &MetricParams,
        scratch: &mut Vec<f64>,
    ) -> Option<Verdict> {
        let st = self;
        let window = (p.window as usize).clamp(1, MAX_WINDOW);
        let (x, what) = st.conv.scored_value(value)?;
        if !x.is_finite() {
            return None;
        }
        st.n += 1;
        let slot = slot_of(time_ns);
        let phase = day_bin(slot);
        let hour = week_bin(slot);
        let needed = p.min_samples.max(1).min(window as u64);
        if (st.base.len() as u64) < needed {
            st.seasonal
                .learn(DAY_BINS, SEASON_MEMORY, phase, time_ns, 0.0);
            if p.weekly {
                st.weekly
                    .learn(WEEK_BINS, SEASON_MEMORY, hour, time_ns, 0.0);
            }
            st.push_base(x, slot, window);
            return Some(Verdict::cold_start(st.n - 1, needed));
        }
        let daily_ready = st.seasonal.ready(phase, time_ns, SEASON_MIN_HISTORY_NS);
        let weekly_known = p.weekly && st.weekly.ready(hour, time_ns, WEEK_MIN_HISTORY_NS);
        let weekly_on = daily_ready && weekly_known && st.week_err < st.day_err;
        st.sync_order();
        let (plain_median, plain_spread) = st.plain_median_spread(scratch);
        // The deseasonalised spread only matters once the daily profile is
        // ready; before that only its median does (the profile's residual).
        let (level, level_spread) = if daily_ready {
            st.median_spread(scratch, Some(weekly_on))
        } else {
            (st.deseasonalised_median(scratch, weekly_on), f64::NAN)
        };
        // The weekly profile has already shown over a week that it predicts
        // better than the daily one; it stays in use through a quiet weekend
        // whose spread it cannot shrink (else Monday morning would alert).
        let seasonal = daily_ready && (weekly_on || level_spread < SEASON_GAIN * plain_spread);
        let (median, spread) = if seasonal {
            (level + st.offset(slot, weekly_on), level_spread)
        } else {
            (plain_median, plain_spread)
        };
        let spread = spread.max(SCALE_SPREAD_FLOOR * st.scale);
        st.scale += (x.abs() - st.scale) / (st.n.min(p.long_memory.max(1)) as f64);
        let deviation = x - median;
        let z = deviation / spread;
        let day = (time_ns / DAY_NS) as u16;
        let az = z.abs();
        // A deviation that came at about this time on each of the last two
        // days, and was notable then, is routine at this time of day (a
        // nightly job): deviations are measured in units of it, so one of
        // the same size is not a peak, and twice its size is.
        let rec = st.recurring.level(phase, day);
        let az_eff = if rec > PEAK_Z
            && st
                .tail
                .surprise(rec)
                .is_some_and(|s| s > RECURRING_SURPRISE)
        {
            az * PEAK_Z / rec
        } else {
            az
        };
        // A point closer to the regime before the last level shift than to
        // the current baseline is measured against that regime, by the score
        // and by the tail model alike: a recovery is not a new anomaly.
        let az_eff = match st.before_shift_z(x, st.offset(slot, weekly_on)) {
            Some(z_before) => az_eff.min(z_before),
            None => az_eff,
        };
        st.recurring.learn(phase, day, az);
        // Judged against this series' own tail of deviations once it has
        // enough peaks; against a normal tail before that.
        let point_surprise = st
            .tail
            .surprise(az_eff)
            .unwrap_or_else(|| normal_surprise(az_eff));
        // The tail model learns from every point: it describes how large this
        // series' deviations get, routine bursts included (it keeps only the
        // last `MAX_PEAKS` peaks, so it forgets). Anomalies stay out of the
        // baseline level and spread instead.
        st.tail.learn(az_eff, p.long_memory);
        let raw = raw_of_surprise(point_surprise);
        // An ongoing incident barely teaches the likelihood that incidents are usual.
        let learn = if st.dedup_left > 0 {
            f64::from(ANOMALOUS_WEIGHT)
        } else {
            1.0
        };
        let lik_surprise = st.likelihood.update(raw, p.long_memory, learn);
        let mut score = score_of_surprise(point_surprise.max(lik_surprise));
        // Dedup: one alert per incident; during the period the series only
        // alerts again if it gets worse than the alert that opened it.
        if st.dedup_left > 0 {
            st.dedup_left -= 1;
            // Worse means a higher severity band, as an alerting system escalates.
            if Severity::of(score) > Severity::of(st.dedup_peak) {
                st.dedup_peak = score;
                st.dedup_left = p.dedup_points as u32;
            } else {
                score *= DEDUP_DAMPING;
            }
        } else if score >= DEDUP_FROM_SCORE {
            st.dedup_left = p.dedup_points as u32;
            st.dedup_peak = score;
        }
        let anomalous_point = point_surprise > POINT_ANOMALY_SURPRISE;
        // The profile learns from every point until it is in use (before that,
        // the daily swing itself looks anomalous), then from normal points only.
        if !seasonal || !anomalous_point {
            let residual = x - level;
            if weekly_known {
                // Which profile predicts this series better, over about a
                // week at 5-min sampling (so that a weekday does not make a
                // daily profile that forgets weekends look better).
                let a = 1.0 / WEEK_SLOTS as f32;
                let day_err = (residual - st.seasonal.offset(phase)).abs() as f32;
                let week_err = (residual - st.offset(slot, true)).abs() as f32;
                st.day_err += a * (day_err - st.day_err);
                st.week_err += a * (week_err - st.week_err);
            }
            st.seasonal
                .learn(DAY_BINS, SEASON_MEMORY, phase, time_ns, residual);
            if p.weekly {
                st.weekly
                    .learn(WEEK_BINS, WEEK_MEMORY, hour, time_ns, residual);
            }
        }
        if anomalous_point {
            let side = if deviation > 0.0 { 1 } else { -1 };
            if st.track_shift(x, slot, side, window) {
                st.before_shift = Some(Regime {
                    level: if seasonal { level } else { plain_median },
                    spread,
                    seasonal,
                    left: u32::try_from(p.long_memory).unwrap_or(u32::MAX),
                });
            }
        } else {
            st.track_shift(x, slot, 0, window);
            st.push_base(x, slot, window);
        }
        Some(Verdict::scored(
            score,
            Explanation::Metric {
                observed: x,
                baseline: median,
                spread,
                what,
            },
        ))
    }

    /// |z| of a point at `x` against the regime before the last level shift,
    /// while it is remembered. `offset` is the current seasonal offset
    /// (added when that regime was deseasonalised). The regime is
    /// remembered for the long memory (`MetricParams::long_memory` points,
    /// about 3.5 days at 5-min sampling), so an outage or a bad deploy that
    /// lasted up to a few days ends quietly.
    fn before_shift_z(&mut self, x: f64, offset: f64) -> Option<f64> {
        let prev = self.before_shift.as_mut()?;
        prev.left = prev.left.saturating_sub(1);
        let expected = prev.level + if prev.seasonal { offset } else { 0.0 };
        let z = (x - expected).abs() / prev.spread.max(f64::MIN_POSITIVE);
        if prev.left == 0 {
            self.before_shift = None;
        }
        Some(z)
    }

    /// Bytes this state holds: the struct and its heap buffers.
    pub fn memory_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.base.capacity() * std::mem::size_of::<f64>()
            + self.order.capacity()
            + self.base_phase.capacity() * std::mem::size_of::<u16>()
            + self.recent.capacity() * std::mem::size_of::<(f64, u16, i8)>()
            + self.seasonal.offsets.capacity() * std::mem::size_of::<f32>()
            + self.seasonal.counts.capacity()
            + self.weekly.offsets.capacity() * std::mem::size_of::<f32>()
            + self.weekly.counts.capacity()
            + self.tail.peaks.capacity() * std::mem::size_of::<f32>()
            + self.recurring.bins.capacity() * std::mem::size_of::<RecurringBin>()
            + self
                .buckets
                .as_ref()
                .map_or(0, |b| std::mem::size_of::<BucketMemory>() + b.heap_bytes())
    }

    fn push_base(&mut self, x: f64, phase: u16, window: usize) {
        let i = if self.base.len() < window {
            self.base.push(x);
            self.base_phase.push(phase);
            self.base.len() - 1
        } else {
            let i = self.base_next as usize % self.base.len();
            order_remove(&mut self.order, &self.base, i);
            self.base[i] = x;
            self.base_phase[i] = phase;
            i
        };
        order_insert(&mut self.order, &self.base, i);
        self.base_next = ((self.base_next as usize + 1) % window) as u32;
        debug_assert_eq!(self.order.len(), self.base.len());
    }

    /// Rebuilds the sort order of the baseline when it is out of step (a
    /// state restored from a snapshot, which does not carry it).
    fn sync_order(&mut self) {
        if self.order.len() != self.base.len() {
            let base = &self.base;
            self.order.clear();
            self.order.extend((0..base.len()).map(|i| i as u8));
            self.order
                .sort_unstable_by(|&a, &b| base[usize::from(a)].total_cmp(&base[usize::from(b)]));
        }
    }

    /// Median and robust spread of the raw baseline values, read off the
    /// sorted copy: the same median and MAD as [`Self::median_spread`] with
    /// `None`, without a selection.
    fn plain_median_spread(&self, scratch: &mut Vec<f64>) -> (f64, f64) {
        let n = self.order.len();
        let at = |rank: usize| self.base[usize::from(self.order[rank])];
        let median = sorted_median(n, at);
        if !median.is_finite() {
            // Overflowed values: leave the edge cases to the general path.
            return self.median_spread(scratch, None);
        }
        let mean_abs =
            self.base.iter().map(|v| (v - median).abs()).sum::<f64>() / self.base.len() as f64;
        let mad = sorted_mad(n, at, median);
        (median, combine_spread(mad, mean_abs))
    }

    /// Median of the baseline values minus the daily profile (the weekly
    /// one when `weekly`); the first half of [`Self::median_spread`].
    fn deseasonalised_median(&self, scratch: &mut Vec<f64>, weekly: bool) -> f64 {
        scratch.clear();
        scratch.extend(
            self.base
                .iter()
                .zip(&self.base_phase)
                .map(|(&v, &slot)| v - self.offset(slot, weekly)),
        );
        median_in_place(scratch)
    }

    /// Seasonal offset of the 5-minute slot of the week `slot`: the weekly
    /// profile's when it is in use, else the daily profile's.
    fn offset(&self, slot: u16, weekly: bool) -> f64 {
        if weekly {
            self.weekly.offset(week_bin(slot))
        } else {
            self.seasonal.offset(day_bin(slot))
        }
    }

    /// Median and robust spread of the baseline values; `deseasonalise`:
    /// `None` for the raw values, `Some(weekly)` for the values minus the
    /// daily profile (the weekly one when `weekly`).
    fn median_spread(&self, scratch: &mut Vec<f64>, deseasonalise: Option<bool>) -> (f64, f64) {
        scratch.clear();
        if let Some(weekly) = deseasonalise {
            scratch.extend(
                self.base
                    .iter()
                    .zip(&self.base_phase)
                    .map(|(&v, &slot)| v - self.offset(slot, weekly)),
            );
        } else {
            scratch.extend_from_slice(&self.base);
        }
        let median = median_in_place(scratch);
        let mean_abs =
            scratch.iter().map(|v| (v - median).abs()).sum::<f64>() / scratch.len() as f64;
        for v in scratch.iter_mut() {
            *v = (*v - median).abs();
        }
        let mad = median_in_place(scratch);
        (median, combine_spread(mad, mean_abs))
    }

    /// Records a point and on which side it was anomalous (0: normal); when
    /// most recent points were anomalous on one side, the baseline is
    /// replaced by the recent values (a new normal, level and spread) and
    /// true is returned.
    fn track_shift(&mut self, x: f64, phase: u16, side: i8, window: usize) -> bool {
        if self.recent.len() < SHIFT_POINTS {
            self.recent.push((x, phase, side));
        } else {
            self.recent[usize::from(self.recent_next) % SHIFT_POINTS] = (x, phase, side);
        }
        self.recent_next = ((usize::from(self.recent_next) + 1) % SHIFT_POINTS) as u8;
        let same = self
            .recent
            .iter()
            .filter(|r| side != 0 && r.2 == side)
            .count();
        if same < SHIFT_QUORUM {
            return false;
        }
        // Oldest first, so the ring keeps its order.
        let start = usize::from(self.recent_next) % self.recent.len();
        let ordered: Vec<(f64, u16, i8)> = self.recent[start..]
            .iter()
            .chain(&self.recent[..start])
            .copied()
            .collect();
        self.base.clear();
        self.order.clear();
        self.base_phase.clear();
        self.base_next = 0;
        for (v, ph, _) in ordered {
            self.push_base(v, ph, window);
        }
        for r in &mut self.recent {
            r.2 = 0;
        }
        true
    }
}

/// A series' normal before a level shift.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
struct Regime {
    /// Baseline median (deseasonalised when `seasonal`).
    level: f64,
    /// Baseline spread.
    spread: f64,
    /// Whether `level` excludes the daily or weekly profile.
    seasonal: bool,
    /// Points left during which a return to this regime is a recovery.
    left: u32,
}

/// The series' own distribution of large deviations (peaks over a threshold,
/// as in SPOT, Siffer et al. 2017): a generalised Pareto tail fitted by the
/// method of moments to the recent peaks of |z|, so that a deviation is
/// judged against how large this series' deviations usually get.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
struct PeakTail {
    peaks: Vec<f32>,
    next: u16,
    /// Long-run fraction of points whose |z| exceeds `PEAK_Z`.
    rate: f64,
    n: u64,
}

impl PeakTail {
    /// Surprise of |z| = `az` under the fitted tail; `None` until enough peaks are known.
    fn surprise(&self, az: f64) -> Option<f64> {
        if self.peaks.len() < MIN_PEAKS {
            return None;
        }
        if az <= PEAK_Z {
            return Some(0.0);
        }
        let k = self.peaks.len() as f64;
        let mean = self.peaks.iter().map(|&y| f64::from(y)).sum::<f64>() / k;
        let var = self
            .peaks
            .iter()
            .map(|&y| (f64::from(y) - mean).powi(2))
            .sum::<f64>()
            / k;
        let y = az - PEAK_Z;
        let log_tail = if var <= 0.0 || mean <= 0.0 {
            -y / mean.max(1e-9)
        } else {
            // Method of moments for the generalised Pareto distribution.
            let r = mean * mean / var;
            let xi = 0.5 * (1.0 - r);
            if xi < 1e-6 {
                // ξ < 0 would give the tail a finite end point and make
                // anything beyond the largest peak seen "impossible";
                // telemetry has no such bound, so a light tail is fitted as
                // an exponential one (σ = mean excess).
                -y / mean
            } else {
                let sigma = 0.5 * mean * (r + 1.0);
                -(1.0 + xi * y / sigma).ln() / xi
            }
        };
        let log_p = self.rate.max(1e-6).ln() + log_tail;
        Some((-log_p / std::f64::consts::LN_10).max(0.0))
    }

    fn learn(&mut self, az: f64, memory: u64) {
        self.n += 1;
        let alpha = 1.0 / (self.n.min(memory.max(1)) as f64);
        let exceeded = az > PEAK_Z;
        self.rate += alpha * (f64::from(u8::from(exceeded)) - self.rate);
        if !exceeded || !az.is_finite() {
            return;
        }
        let y = (az - PEAK_Z) as f32;
        if self.peaks.len() < MAX_PEAKS {
            self.peaks.push(y);
        } else {
            self.peaks[usize::from(self.next) % MAX_PEAKS] = y;
        }
        self.next = ((usize::from(self.next) + 1) % MAX_PEAKS) as u16;
    }
}

/// Time-of-day profile: per bin, the typical offset of the value from the
/// (deseasonalised) baseline median.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
struct Seasonal {
    offsets: Vec<f32>,
    counts: Vec<u8>,
    first_ns: u64,
    started: bool,
}

impl Seasonal {
    fn offset(&self, phase: u16) -> f64 {
        self.offsets
            .get(usize::from(phase))
            .map_or(0.0, |&v| f64::from(v))
    }

    /// True when the profile has `min_history_ns` of history, and this bin
    /// enough points, to be trusted.
    fn ready(&self, phase: u16, time_ns: u64, min_history_ns: u64) -> bool {
        self.started
            && time_ns.saturating_sub(self.first_ns) >= min_history_ns
            && self
                .counts
                .get(usize::from(phase))
                .is_some_and(|&c| c >= SEASON_MIN_PER_BIN)
    }

    /// Learns `residual` in bin `phase` of `bins`, with an effective memory of `memory` points.
    fn learn(&mut self, bins: usize, memory: u8, phase: u16, time_ns: u64, residual: f64) {
        if !self.started {
            self.started = true;
            self.first_ns = time_ns;
            self.offsets = vec![0.0; bins];
            self.counts = vec![0; bins];
        }
        let i = usize::from(phase);
        let (Some(o), Some(c)) = (self.offsets.get_mut(i), self.counts.get_mut(i)) else {
            return;
        };
        *c = c.saturating_add(1);
        let alpha = 1.0 / f64::from((*c).min(memory));
        *o += (alpha * (residual - f64::from(*o))) as f32;
    }
}

/// Nanoseconds per day.
const DAY_NS: u64 = 86_400 * 1_000_000_000;
/// Neighbouring time-of-day bins (each side) searched for a recurring deviation.
const RECURRING_REACH: usize = 2;

/// Per time-of-day bin, the largest |z| of the last three days: a deviation
/// that came at about this time of day on each of the last two days (a
/// nightly job, a morning rush) is routine, not an anomaly.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize)]
struct RecurringBin {
    /// Largest |z| on `day`, the day before and the day before that.
    max: [f32; 3],
    day: u16,
}

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
struct Recurring {
    bins: Vec<RecurringBin>,
}

impl Recurring {
    /// The deviation that recurred near this time of day on both of the two
    /// days before `day` (the smaller of the two days' largest), 0 when none.
    fn level(&self, phase: u16, day: u16) -> f64 {
        if self.bins.is_empty() {
            return 0.0;
        }
        let reach = RECURRING_REACH;
        let (mut y1, mut y2) = (0.0f32, 0.0f32);
        for k in 0..=2 * reach {
            let b = (usize::from(phase) + DAY_BINS + k - reach) % DAY_BINS;
            let e = &self.bins[b];
            let (a1, a2) = match day.wrapping_sub(e.day) {
                0 => (e.max[1], e.max[2]),
                1 => (e.max[0], e.max[1]),
                2 => (0.0, e.max[0]),
                _ => (0.0, 0.0),
            };
            y1 = y1.max(a1);
            y2 = y2.max(a2);
        }
        f64::from(y1.min(y2))
    }

    fn learn(&mut self, phase: u16, day: u16, az: f64) {
        if self.bins.is_empty() {
            self.bins = vec![RecurringBin::default(); DAY_BINS];
        }
        let Some(e) = self.bins.get_mut(usize::from(phase)) else {
            return;
        };
        match day.wrapping_sub(e.day) {
            0 => {}
            1 => e.max = [0.0, e.max[0], e.max[1]],
            2 => e.max = [0.0, 0.0, e.max[0]],
            _ => e.max = [0.0; 3],
        }
        e.day = day;
        if az.is_finite() {
            e.max[0] = e.max[0].max(az as f32);
        }
    }
}

/// Length of a slot of the week (5 minutes).
const SLOT_NS: u64 = 300 * 1_000_000_000;
/// 5-minute slots per week.
const WEEK_SLOTS: u64 = 7 * 288;

/// 5-minute slot of the week of `time_ns` (UTC; weeks counted from the epoch).
fn slot_of(time_ns: u64) -> u16 {
    ((time_ns / SLOT_NS) % WEEK_SLOTS) as u16
}

/// Time-of-day bin (15 minutes) of a slot.
fn day_bin(slot: u16) -> u16 {
    (slot % 288) / (288 / DAY_BINS as u16)
}

/// Half-hour-of-week bin of a slot.
fn week_bin(slot: u16) -> u16 {
    slot / (WEEK_SLOTS as u16 / WEEK_BINS as u16)
}

/// Score (0–100) of a surprise (−log10 of a tail probability): 50 at a
/// 1-in-100,000 event (Numenta's alert level for the anomaly likelihood),
/// 75 at 1 in 10^10, approaching 100 without reaching it, so that rarer
/// events still rank higher.
fn score_of_surprise(surprise: f64) -> f32 {
    (100.0 * (1.0 - (-surprise.max(0.0) / SURPRISE_SCALE).exp())) as f32
}

/// Raw score (0–1) of a point for the likelihood layer: 0 up to a 1-in-100
/// event, growing with the surprise beyond.
fn raw_of_surprise(surprise: f64) -> f64 {
    1.0 - (-(surprise - RAW_FROM_SURPRISE).max(0.0) / RAW_SURPRISE_SCALE).exp()
}

/// Robust spread from the MAD and the mean absolute deviation.
fn combine_spread(mad: f64, mean_abs: f64) -> f64 {
    // 1.4826·MAD estimates σ for normal data; when more than half the values
    // are equal (quantised or idle series) MAD is 0 and the mean absolute
    // deviation (·1.2533) takes over; the floor keeps a flat line finite.
    (MAD_TO_SIGMA * mad)
        .max(MEAN_ABS_TO_SIGMA * mean_abs)
        .max(f64::MIN_POSITIVE)
}

// The sort order of the baseline holds its indices as bytes.
const _: () = assert!(MAX_WINDOW <= 256);

/// First rank in `order` whose value is not below `x` (`f64::total_cmp`).
fn order_rank(order: &[u8], base: &[f64], x: f64) -> usize {
    order.partition_point(|&k| base[usize::from(k)].total_cmp(&x).is_lt())
}

/// Inserts index `i` of `base` into its sort order: a binary search and one memmove.
fn order_insert(order: &mut Vec<u8>, base: &[f64], i: usize) {
    let rank = order_rank(order, base, base[i]);
    order.insert(rank, i as u8);
}

/// Removes index `i` of `base` (its value still in place) from its sort order.
fn order_remove(order: &mut Vec<u8>, base: &[f64], i: usize) {
    let first = order_rank(order, base, base[i]);
    // Among equal values, find the one stored at `i`.
    let found = order[first..]
        .iter()
        .take_while(|&&k| base[usize::from(k)].to_bits() == base[i].to_bits())
        .position(|&k| usize::from(k) == i);
    debug_assert!(found.is_some(), "index {i} missing from the sort order");
    if let Some(offset) = found {
        order.remove(first + offset);
    }
}

/// [`median_in_place`] of `n` values given in ascending order by `at(rank)`:
/// the value of rank n/2, averaged with the one of rank n/2 − 1 when n is even.
fn sorted_median(n: usize, at: impl Fn(usize) -> f64) -> f64 {
    if n == 0 {
        return 0.0;
    }
    let hi = at(n / 2);
    if n % 2 == 1 {
        return hi;
    }
    0.5 * (at(n / 2 - 1) + hi)
}

/// [`median_in_place`] of the absolute deviations from `median` of `n`
/// values given in ascending order by `at(rank)`, without building them: the
/// deviations below the median grow leftwards from it and those above grow
/// rightwards, so the values of rank n/2 − 1 and n/2 come from merging the
/// two runs outwards (n/2 + 1 steps).
fn sorted_mad(n: usize, at: impl Fn(usize) -> f64, median: f64) -> f64 {
    if n == 0 {
        return 0.0;
    }
    // First rank not below the median.
    let (mut lo, mut hi) = (0, n);
    while lo < hi {
        let mid = (lo + hi) / 2;
        if at(mid) < median {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    let split = lo;
    // Next candidates: sorted[left - 1] below, sorted[right] above.
    let (mut left, mut right) = (split, split);
    let (mut prev, mut cur) = (0.0, 0.0);
    for _ in 0..=n / 2 {
        let below = (left > 0).then(|| (at(left - 1) - median).abs());
        let above = (right < n).then(|| (at(right) - median).abs());
        prev = cur;
        cur = match (below, above) {
            (Some(b), Some(a)) if b < a => {
                left -= 1;
                b
            }
            (_, Some(a)) => {
                right += 1;
                a
            }
            (Some(b), None) => {
                left -= 1;
                b
            }
            (None, None) => break,
        };
    }
    if n % 2 == 1 {
        cur
    } else {
        0.5 * (prev + cur)
    }
}

/// Median of `v` (reorders it); 0 for an empty slice.
fn median_in_place(v: &mut [f64]) -> f64 {
    let n = v.len();
    if n == 0 {
        return 0.0;
    }
    let (_, &mut hi, _) = v.select_nth_unstable_by(n / 2, f64::total_cmp);
    if n % 2 == 1 {
        return hi;
    }
    let lo = v[..n / 2].iter().copied().fold(f64::NEG_INFINITY, f64::max);
    0.5 * (lo + hi)
}

/// The metric detector for one environment (or one shard of it).
#[derive(Debug)]
pub struct MetricDetector {
    params: MetricParams,
    series: BoundedMap<SeriesState>,
    scratch: Vec<f64>,
}

impl MetricDetector {
    /// A detector with `params`.
    pub fn new(params: MetricParams) -> Self {
        Self {
            params,
            series: BoundedMap::new(params.max_series),
            scratch: Vec::with_capacity(MAX_WINDOW),
        }
    }

    /// The detector's state, for a snapshot.
    pub fn snapshot(&self) -> MapSnapshot<&SeriesState> {
        self.series.snapshot()
    }

    /// Adds the series of a snapshot to the detector.
    pub fn restore(&mut self, snap: MapSnapshot<SeriesState>) {
        self.series.restore_snapshot(snap);
    }

    /// Scores one point of series `key` at `time_ns` and learns from it.
    /// `None` when the point carries nothing to score (first point of a
    /// cumulative series, non-finite value).
    pub fn observe(&mut self, key: KeyHash, time_ns: u64, value: PointValue) -> Option<Verdict> {
        let (st, _overflow) = self.series.get_or_insert(key, SeriesState::default);
        st.observe(time_ns, value, &self.params, &mut self.scratch)
    }

    /// The distribution of a histogram's observations since its previous
    /// point, from the bucket memory kept under `bucket_key` (see
    /// [`super::histogram`]). `Ok(None)` when there is nothing to derive yet,
    /// or when the series cap is reached (the shared overflow state cannot
    /// hold one histogram's previous counts).
    pub fn histogram_interval(
        &mut self,
        bucket_key: KeyHash,
        obs: &HistogramObs<'_>,
    ) -> Result<Option<Distribution>, HistogramError> {
        if !obs.cumulative {
            // A delta point is its own interval: nothing to remember.
            return BucketMemory::default().interval(obs);
        }
        let (st, overflow) = self.series.get_or_insert(bucket_key, SeriesState::default);
        if overflow {
            return Ok(None);
        }
        st.buckets
            .get_or_insert_with(Default::default)
            .interval(obs)
    }

    /// Per-series states (for memory accounting and snapshots).
    pub fn states(&self) -> impl Iterator<Item = &SeriesState> {
        self.series.values()
    }

    /// Number of tracked series.
    pub fn series(&self) -> usize {
        self.series.len()
    }

    /// Points routed to the overflow series so far.
    pub fn overflowed(&self) -> u64 {
        self.series.overflowed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::likelihood;
    use crate::detect::ANOMALOUS_SCORE;
    use rand::{rngs::StdRng, Rng, SeedableRng};

    #[test]
    fn spike_in_noisy_gauge_scores_high() {
        let mut rng = StdRng::seed_from_u64(3);
        let mut d = MetricDetector::new(MetricParams::default());
        let mut max_normal = 0.0f32;
        for i in 0..2_000 {
            let x = 100.0 + rng.random_range(-5.0..5.0);
            let v = d.observe(1, 0, PointValue::Gauge(x)).unwrap();
            if i > 100 {
                max_normal = max_normal.max(v.score);
            }
        }
        assert!(max_normal < 25.0, "normal noise scored {max_normal}");
        let v = d.observe(1, 0, PointValue::Gauge(200.0)).unwrap();
        assert!(v.score >= 75.0, "spike scored {}", v.score);
        // The spike did not move the baseline much: the next normal value is normal.
        let v = d.observe(1, 0, PointValue::Gauge(101.0)).unwrap();
        assert!(v.score < 25.0, "{}", v.score);
    }

    #[test]
    fn cumulative_sums_become_deltas_and_resets_are_handled() {
        let mut d = MetricDetector::new(MetricParams {
            min_samples: 5,
            ..MetricParams::default()
        });
        assert!(d
            .observe(
                9,
                0,
                PointValue::CumulativeSum {
                    value: 10.0,
                    start_ns: 1
                }
            )
            .is_none());
        let mut total = 10.0;
        for _ in 0..50 {
            total += 10.0;
            d.observe(
                9,
                0,
                PointValue::CumulativeSum {
                    value: total,
                    start_ns: 1,
                },
            );
        }
        // A reset (new start time, value back near zero) with the usual delta is not an anomaly.
        let v = d
            .observe(
                9,
                0,
                PointValue::CumulativeSum {
                    value: 10.0,
                    start_ns: 2,
                },
            )
            .unwrap();
        assert!(v.score < 25.0, "reset scored {}", v.score);
        // A delta ten times the usual one is.
        let v = d
            .observe(
                9,
                0,
                PointValue::CumulativeSum {
                    value: 110.0,
                    start_ns: 2,
                },
            )
            .unwrap();
        assert!(v.score >= 75.0, "jump scored {}", v.score);
    }

    const MIN5: u64 = 300 * 1_000_000_000;
    /// 2014-04-01 00:00 UTC: series start at midnight, like NAB's.
    const T0: u64 = 1_396_310_400 * 1_000_000_000;

    fn gauge(d: &mut MetricDetector, i: u64, x: f64) -> Verdict {
        d.observe(1, T0 + i * MIN5, PointValue::Gauge(x))
            .expect("gauges are always scored")
    }

    fn baseline(v: &Verdict) -> f64 {
        match v.explanation {
            Explanation::Metric { baseline, .. } => baseline,
            ref other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn level_shift_is_alerted_once_then_learned() {
        let mut rng = StdRng::seed_from_u64(11);
        let mut d = MetricDetector::new(MetricParams::default());
        let mut i = 0;
        let mut before = 0;
        for _ in 0..1_000 {
            let v = gauge(&mut d, i, 100.0 + rng.random_range(-5.0..5.0));
            before += usize::from(i > 100 && v.score >= ANOMALOUS_SCORE);
            i += 1;
        }
        assert_eq!(before, 0, "alerts on plain noise");
        let mut alerts = Vec::new();
        let mut last = Vec::new();
        for k in 0..600 {
            let v = gauge(&mut d, i, 200.0 + rng.random_range(-5.0..5.0));
            if v.score >= ANOMALOUS_SCORE {
                alerts.push(k);
            }
            if k >= 200 {
                last.push(v);
            }
            i += 1;
        }
        assert_eq!(alerts, vec![0], "the shift alerts once, at once");
        let max_late = last.iter().map(|v| v.score).fold(0.0f32, f32::max);
        assert!(max_late < 25.0, "the new level is normal now: {max_late}");
        let b = baseline(last.last().expect("points"));
        assert!((b - 200.0).abs() < 3.0, "baseline {b}");
    }

    #[test]
    fn return_to_the_level_before_a_shift_is_a_recovery() {
        let mut rng = StdRng::seed_from_u64(13);
        let mut d = MetricDetector::new(MetricParams::default());
        let per_day = 288u64;
        // A daily cycle with noise; `offset` moves the whole level.
        let mut day = |d: &mut MetricDetector, n: u64, offset: f64| -> Vec<f32> {
            (0..per_day)
                .map(|k| {
                    let i = n * per_day + k;
                    let phase = k as f64 / per_day as f64;
                    let x = 50.0
                        + 20.0 * (std::f64::consts::TAU * phase).sin()
                        + offset
                        + rng.random_range(-3.0..3.0);
                    gauge(d, i, x).score
                })
                .collect()
        };
        for n in 0..10 {
            day(&mut d, n, 0.0);
        }
        // A day at a lower level (an outage of part of the fleet): alerted
        // at once, then learned as the new normal.
        let outage = day(&mut d, 10, -30.0);
        assert!(outage[0] >= ANOMALOUS_SCORE, "{}", outage[0]);
        assert!(
            outage[100..].iter().all(|&s| s < DEDUP_FROM_SCORE),
            "the outage level was not learned"
        );
        assert!(
            d.states()
                .next()
                .is_some_and(|st| st.before_shift.is_some()),
            "the outage was a level shift"
        );
        // The fleet recovers: back to the old level, which is not a new
        // anomaly (judged against the old regime, its noise is noise: at
        // most one point reaches the Minor band, none the anomalous level).
        let back = day(&mut d, 11, 0.0);
        let max_back = back.iter().copied().fold(0.0f32, f32::max);
        let minor = back.iter().filter(|&&s| s >= DEDUP_FROM_SCORE).count();
        assert!(max_back < ANOMALOUS_SCORE, "the recovery scored {max_back}");
        assert!(
            minor <= 1,
            "{minor} points of the recovery were Minor or worse"
        );
    }

    #[test]
    fn anomalous_points_stay_out_of_the_baseline() {
        let mut rng = StdRng::seed_from_u64(5);
        let mut d = MetricDetector::new(MetricParams::default());
        let mut i = 0;
        for _ in 0..500 {
            gauge(&mut d, i, 100.0 + rng.random_range(-5.0..5.0));
            i += 1;
        }
        // An outage shorter than a level shift: 8 points at 0.
        let mut outage = Vec::new();
        for _ in 0..8 {
            outage.push(gauge(&mut d, i, 0.0));
            i += 1;
        }
        assert!(outage[0].score >= ANOMALOUS_SCORE, "{}", outage[0].score);
        for v in &outage {
            let b = baseline(v);
            assert!((b - 100.0).abs() < 3.0, "outage moved the baseline to {b}");
        }
        let after = gauge(&mut d, i, 101.0);
        assert!((baseline(&after) - 100.0).abs() < 3.0);
        // Once the outage has left the likelihood's short window, normal is normal.
        let mut late = 0.0f32;
        for k in 1..=20 {
            let v = gauge(&mut d, i + k, 100.0 + rng.random_range(-5.0..5.0));
            if k > likelihood::SHORT_WINDOW as u64 {
                late = late.max(v.score);
            }
        }
        assert!(late < 25.0, "normal values after the outage scored {late}");
    }

    #[test]
    fn daily_profile_is_used_only_after_two_days() {
        let mut rng = StdRng::seed_from_u64(9);
        let mut d = MetricDetector::new(MetricParams::default());
        let per_day = 288u64;
        // Peak at 06:00 UTC (point 72 of each day).
        let value = |i: u64, noise: f64| {
            let phase = (i % per_day) as f64 / per_day as f64;
            100.0 + 50.0 * (2.0 * std::f64::consts::PI * phase).sin() + noise
        };
        let mut at_six = Vec::new();
        let mut max_day4 = 0.0f32;
        for i in 0..5 * per_day {
            let v = gauge(&mut d, i, value(i, rng.random_range(-1.0..1.0)));
            if i % per_day == 72 {
                at_six.push(baseline(&v));
            }
            if i / per_day == 4 {
                max_day4 = max_day4.max(v.score);
            }
        }
        // Day 1: no profile yet, the baseline is the recent median, far from the peak.
        assert!(
            (at_six[1] - 150.0).abs() > 20.0,
            "day 1 baseline {}",
            at_six[1]
        );
        // Days 3 and 4: the profile predicts the daily peak.
        for day in [3, 4] {
            assert!(
                (at_six[day] - 150.0).abs() < 5.0,
                "day {day} baseline {}",
                at_six[day]
            );
        }
        assert!(
            max_day4 < ANOMALOUS_SCORE,
            "daily cycle alerted: {max_day4}"
        );
        // A spike at the daily trough is still caught.
        let trough = 5 * per_day + 216;
        for i in 5 * per_day..trough {
            gauge(&mut d, i, value(i, rng.random_range(-1.0..1.0)));
        }
        let v = gauge(&mut d, trough, value(trough, 0.0) + 60.0);
        assert!(
            v.score >= ANOMALOUS_SCORE,
            "spike at the trough scored {}",
            v.score
        );
    }

    /// Weekdays busy, weekends quiet (a daily cycle on both): once two weeks
    /// are known, a weekend is normal; without the weekly profile every
    /// weekend alerts.
    fn weekday_weekend(weekly: bool) -> (Vec<f32>, f32) {
        let mut rng = StdRng::seed_from_u64(21);
        let mut d = MetricDetector::new(MetricParams {
            weekly,
            ..MetricParams::default()
        });
        let per_day = 288u64;
        let value = |i: u64, noise: f64| {
            let t = T0 + i * MIN5;
            // 1970-01-01 was a Thursday: 0 = Sunday, 6 = Saturday.
            let dow = (t / DAY_NS + 4) % 7;
            let phase = (i % per_day) as f64 / per_day as f64;
            let daily = (std::f64::consts::TAU * phase).sin();
            if dow == 0 || dow == 6 {
                30.0 + 5.0 * daily + noise
            } else {
                100.0 + 20.0 * daily + noise
            }
        };
        // Highest score in the first hour of each weekend start and end
        // (Saturday and Monday 00:00) from the third week on.
        let mut transitions = Vec::new();
        for i in 0..28 * per_day {
            let v = gauge(&mut d, i, value(i, rng.random_range(-2.0..2.0)));
            let day = i / per_day;
            if [18, 20, 25, 27].contains(&day) && i % per_day < 12 {
                if i % per_day == 0 {
                    transitions.push(0.0f32);
                }
                if let Some(m) = transitions.last_mut() {
                    *m = m.max(v.score);
                }
            }
        }
        // A spike on the fourth Saturday afternoon (day 25 from a Tuesday).
        let spike_at = 28 * per_day + 4 * per_day + 180;
        for i in 28 * per_day..spike_at {
            gauge(&mut d, i, value(i, rng.random_range(-2.0..2.0)));
        }
        let spike = gauge(&mut d, spike_at, value(spike_at, 0.0) + 60.0);
        (transitions, spike.score)
    }

    #[test]
    fn weekly_profile_makes_weekends_normal_after_two_weeks() {
        // Days 18-19 and 25-26 are the weekends (the series starts on a Tuesday).
        let (without, _) = weekday_weekend(false);
        assert_eq!(without.len(), 4);
        assert!(
            without.iter().all(|&s| s >= DEDUP_FROM_SCORE),
            "without the weekly profile each weekend start and end alerts: {without:?}"
        );
        let (with, spike) = weekday_weekend(true);
        assert_eq!(with.len(), 4);
        assert!(
            with.iter().all(|&s| s < DEDUP_FROM_SCORE),
            "weekend starts and ends alerted: {with:?}"
        );
        assert!(spike >= ANOMALOUS_SCORE, "weekend spike scored {spike}");
    }

    #[test]
    fn series_state_is_bounded_and_round_trips() {
        let params = MetricParams {
            window: MAX_WINDOW as u64,
            ..MetricParams::default()
        };
        let mut rng = StdRng::seed_from_u64(1);
        let mut d = MetricDetector::new(params);
        let next = |i: u64, rng: &mut StdRng| {
            let spike = if i.is_multiple_of(97) { 80.0 } else { 0.0 };
            let daily = 20.0 * ((i % 288) as f64 / 288.0 * std::f64::consts::TAU).sin();
            100.0 + daily + spike + rng.random_range(-3.0..3.0)
        };
        for i in 0..6_000 {
            let x = next(i, &mut rng);
            gauge(&mut d, i, x);
        }
        let state = d.states().next().expect("one series");
        let bytes = state.memory_bytes();
        assert!(bytes <= 8 * 1024, "series state holds {bytes} bytes");
        // A restored copy scores the rest of the stream exactly like the original.
        let bytes = postcard::to_stdvec(state).expect("serialize");
        let mut copy: SeriesState = postcard::from_bytes(&bytes).expect("deserialize");
        let mut scratch = Vec::new();
        for i in 6_000..6_500 {
            let x = next(i, &mut rng);
            let a = gauge(&mut d, i, x);
            let b = copy
                .observe(T0 + i * MIN5, PointValue::Gauge(x), &params, &mut scratch)
                .expect("scored");
            assert_eq!(a, b, "point {i}");
        }
    }

    #[test]
    fn first_points_are_cold_start() {
        let mut d = MetricDetector::new(MetricParams::default());
        let v = d.observe(1, 0, PointValue::Gauge(1.0)).unwrap();
        assert_eq!(v.severity, Severity::ColdStart);
    }

    #[test]
    fn histogram_scored_on_mean_of_new_observations() {
        let mut d = MetricDetector::new(MetricParams {
            min_samples: 5,
            ..MetricParams::default()
        });
        let (mut c, mut s) = (0u64, 0.0f64);
        for i in 0..100 {
            c += 10;
            s += 10.0 * (20.0 + (i % 3) as f64);
            d.observe(
                5,
                0,
                PointValue::Histogram {
                    count: c,
                    sum: s,
                    cumulative: true,
                    start_ns: 1,
                },
            );
        }
        c += 10;
        s += 10.0 * 200.0;
        let v = d
            .observe(
                5,
                0,
                PointValue::Histogram {
                    count: c,
                    sum: s,
                    cumulative: true,
                    start_ns: 1,
                },
            )
            .unwrap();
        assert!(v.score >= 75.0, "{}", v.score);
        match v.explanation {
            Explanation::Metric { observed, what, .. } => {
                assert_eq!(what, "mean");
                assert!((observed - 200.0).abs() < 1e-9);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn histogram_bucket_memory_is_a_series_counted_against_the_cap() {
        use crate::detect::histogram::{Buckets, ExpSide, HistogramObs, MAX_BUCKETS};
        let mut d = MetricDetector::new(MetricParams {
            max_series: 2,
            ..MetricParams::default()
        });
        let counts = vec![3u64; 2000];
        let obs = HistogramObs {
            buckets: Buckets::Exponential {
                scale: 10,
                zero_count: 0,
                zero_threshold: 0.0,
                positive: ExpSide {
                    offset: 0,
                    counts: &counts,
                },
                negative: ExpSide::default(),
            },
            cumulative: true,
            start_ns: 1,
            min: None,
            max: None,
        };
        assert_eq!(d.histogram_interval(10, &obs), Ok(None));
        assert!(d.histogram_interval(10, &obs).unwrap().is_some());
        assert_eq!(d.series(), 1);
        // The state holding the previous counts is bounded like any series.
        let st = d.states().next().unwrap();
        assert!(
            st.memory_bytes() <= std::mem::size_of::<SeriesState>() + 64 + MAX_BUCKETS * 8,
            "{}",
            st.memory_bytes()
        );
        d.observe(11, 0, PointValue::Gauge(1.0));
        assert_eq!(d.series(), 2);
        // Past the cap a histogram gets no quantiles (the overflow state is shared).
        assert_eq!(d.histogram_interval(12, &obs), Ok(None));
        assert_eq!(d.histogram_interval(12, &obs), Ok(None));
        assert_eq!(d.series(), 2);
    }

    /// Values as telemetry has them: noisy, quantised (many ties), signed
    /// zeros, and occasionally far out.
    fn telemetry_value() -> impl proptest::strategy::Strategy<Value = f64> {
        use proptest::prelude::*;
        prop_oneof![
            4 => -1e6f64..1e6,
            3 => (0i32..8).prop_map(f64::from),
            1 => Just(-0.0),
            1 => Just(0.0),
            1 => -1e300f64..1e300,
        ]
    }

    proptest::proptest! {
        /// The sorted-copy median and MAD are the selection-based ones, bit
        /// for bit; the spread differs at most by the order in which the
        /// mean absolute deviation is summed.
        #[test]
        fn sorted_median_and_mad_match_selection(
            values in proptest::collection::vec(telemetry_value(), 1..=MAX_WINDOW),
        ) {
            let mut sorted = values.clone();
            sorted.sort_unstable_by(f64::total_cmp);
            let mut scratch = values.clone();
            let median = median_in_place(&mut scratch);
            let at = |rank: usize| sorted[rank];
            proptest::prop_assert_eq!(sorted_median(sorted.len(), at).to_bits(), median.to_bits());
            for v in scratch.iter_mut() {
                *v = (*v - median).abs();
            }
            let mad = median_in_place(&mut scratch);
            if median.is_finite() {
                proptest::prop_assert_eq!(
                    sorted_mad(sorted.len(), at, median).to_bits(),
                    mad.to_bits()
                );
            }
        }

        /// A series state keeps its sorted copy equal to its baseline through
        /// ring replacement and level shifts, and scores as the selection
        /// path would: the same median, and the same spread up to rounding.
        #[test]
        fn incremental_window_matches_full_recomputation(
            values in proptest::collection::vec(telemetry_value(), 1..600),
            window in 1usize..=40,
            sides in proptest::collection::vec(-1i8..=1, 600),
        ) {
            let mut st = SeriesState::default();
            let mut scratch = Vec::new();
            for (i, &x) in values.iter().enumerate() {
                if i % 3 == 0 {
                    st.track_shift(x, 0, sides[i], window);
                }
                st.push_base(x, (i % 2016) as u16, window);
                let mut expect = st.base.clone();
                expect.sort_unstable_by(f64::total_cmp);
                let in_order: Vec<f64> =
                    st.order.iter().map(|&k| st.base[usize::from(k)]).collect();
                let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                proptest::prop_assert_eq!(bits(&in_order), bits(&expect));
                let mut indices = st.order.clone();
                indices.sort_unstable();
                proptest::prop_assert!(indices.iter().enumerate().all(|(i, &k)| usize::from(k) == i));
                let (m_new, s_new) = st.plain_median_spread(&mut scratch);
                let (m_old, s_old) = st.median_spread(&mut scratch, None);
                proptest::prop_assert_eq!(m_new.to_bits(), m_old.to_bits());
                let tolerance = 1e-12 * s_old.abs().max(f64::MIN_POSITIVE);
                proptest::prop_assert!(
                    s_new == s_old || (s_new - s_old).abs() <= tolerance,
                    "spread {} vs {}", s_new, s_old
                );
            }
        }
    }

    #[test]
    fn restored_state_rebuilds_its_baseline_order() {
        let mut d = MetricDetector::new(MetricParams::default());
        for i in 0..300 {
            gauge(&mut d, i, (i % 17) as f64);
        }
        let state = d.states().next().expect("one series");
        let bytes = postcard::to_stdvec(state).expect("serialize");
        let mut copy: SeriesState = postcard::from_bytes(&bytes).expect("deserialize");
        assert!(copy.order.is_empty(), "the sort order is not serialised");
        copy.sync_order();
        let values = |st: &SeriesState| -> Vec<f64> {
            st.order.iter().map(|&k| st.base[usize::from(k)]).collect()
        };
        assert_eq!(copy.order.len(), state.base.len());
        assert_eq!(values(&copy), values(state));
    }
}
