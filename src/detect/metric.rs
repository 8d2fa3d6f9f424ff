//! Metric detector: per series (resource attributes + metric name + point
//! attributes) a robust exponentially weighted baseline (mean and spread,
//! with residuals clipped so outliers barely move it) and a two-sided normal
//! tail probability of each new value.
//!
//! Cumulative sums are turned into deltas (a value below the previous one, or
//! a new start time, is a counter reset); histograms are scored on the mean
//! of the new observations.

use statrs::function::erf::erfc;

use super::keys::{BoundedMap, KeyHash, MapSnapshot};
use super::{score_from_tail_probability, Explanation, Verdict, ANOMALOUS_SCORE, ANOMALOUS_WEIGHT};

/// Metric detector settings.
#[derive(Debug, Clone, Copy)]
pub struct MetricParams {
    /// Points a series needs before it is scored.
    pub min_samples: u64,
    /// Effective memory of the baseline, in points.
    pub window: u64,
    /// Cap on tracked series.
    pub max_series: usize,
}

impl Default for MetricParams {
    fn default() -> Self {
        Self {
            min_samples: 30,
            window: 200,
            max_series: 50_000,
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
}

/// Per-series state.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct SeriesState {
    mean: f64,
    var: f64,
    n: u64,
    prev_value: f64,
    prev_count: u64,
    prev_start_ns: u64,
    has_prev: bool,
}

impl SeriesState {
    /// Turns the point into the value to score; `None` when there is nothing
    /// to score yet (first point of a cumulative series, empty histogram delta).
    fn scored_value(&mut self, v: PointValue) -> Option<(f64, &'static str)> {
        match v {
            PointValue::Gauge(x) => Some((x, "value")),
            PointValue::DeltaSum(x) => Some((x, "delta")),
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

    fn learn(&mut self, x: f64, weight: f64, p: &MetricParams) {
        self.n += 1;
        if self.n == 1 {
            self.mean = x;
            self.var = 0.0;
            return;
        }
        let alpha = weight / (self.n.min(p.window) as f64);
        let sd = self.var.sqrt();
        let resid = x - self.mean;
        // Clip the residual at 4 spreads so a spike barely moves the baseline.
        let clipped = if sd > 0.0 && self.n > p.min_samples {
            resid.clamp(-4.0 * sd, 4.0 * sd)
        } else {
            resid
        };
        self.mean += alpha * clipped;
        self.var = (1.0 - alpha) * (self.var + alpha * clipped * clipped);
    }
}

/// The metric detector for one environment (or one shard of it).
#[derive(Debug)]
pub struct MetricDetector {
    params: MetricParams,
    series: BoundedMap<SeriesState>,
}

impl MetricDetector {
    /// A detector with `params`.
    pub fn new(params: MetricParams) -> Self {
        Self {
            params,
            series: BoundedMap::new(params.max_series),
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

    /// Scores one point of series `key` and learns from it. `None` when the
    /// point carries nothing to score (first point of a cumulative series).
    pub fn observe(&mut self, key: KeyHash, value: PointValue) -> Option<Verdict> {
        let p = self.params;
        let (st, _overflow) = self.series.get_or_insert(key, SeriesState::default);
        let (x, what) = st.scored_value(value)?;
        if !x.is_finite() {
            return None;
        }
        if st.n < p.min_samples {
            st.learn(x, 1.0, &p);
            return Some(Verdict::cold_start(st.n - 1, p.min_samples));
        }
        // Spread floor: 0.1% of the level, so a flat series is not infinitely sensitive to noise.
        let spread = (st.var + (1e-3 * st.mean).powi(2) + 1e-12).sqrt();
        let z = (x - st.mean).abs() / spread;
        let tail = erfc(z / std::f64::consts::SQRT_2);
        let score = score_from_tail_probability(tail);
        let verdict = Verdict::scored(
            score,
            Explanation::Metric {
                observed: x,
                baseline: st.mean,
                spread,
                what,
            },
        );
        let weight = if score >= ANOMALOUS_SCORE {
            ANOMALOUS_WEIGHT as f64
        } else {
            1.0
        };
        st.learn(x, weight, &p);
        Some(verdict)
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
    use crate::detect::Severity;
    use rand::{rngs::StdRng, Rng, SeedableRng};

    #[test]
    fn spike_in_noisy_gauge_scores_high() {
        let mut rng = StdRng::seed_from_u64(3);
        let mut d = MetricDetector::new(MetricParams::default());
        let mut max_normal = 0.0f32;
        for i in 0..2_000 {
            let x = 100.0 + rng.random_range(-5.0..5.0);
            let v = d.observe(1, PointValue::Gauge(x)).unwrap();
            if i > 100 {
                max_normal = max_normal.max(v.score);
            }
        }
        assert!(max_normal < 25.0, "normal noise scored {max_normal}");
        let v = d.observe(1, PointValue::Gauge(200.0)).unwrap();
        assert!(v.score >= 75.0, "spike scored {}", v.score);
        // The spike did not move the baseline much: the next normal value is normal.
        let v = d.observe(1, PointValue::Gauge(101.0)).unwrap();
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
                PointValue::CumulativeSum {
                    value: 110.0,
                    start_ns: 2,
                },
            )
            .unwrap();
        assert!(v.score >= 75.0, "jump scored {}", v.score);
    }

    #[test]
    fn first_points_are_cold_start() {
        let mut d = MetricDetector::new(MetricParams::default());
        let v = d.observe(1, PointValue::Gauge(1.0)).unwrap();
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
}
