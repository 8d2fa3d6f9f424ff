//! Histograms into quantile series.
//!
//! A histogram point (explicit buckets or exponential) is turned into the
//! distribution of the observations that arrived since the previous point
//! (cumulative points: bucket by bucket, reset-aware; delta points as they
//! are), and p50 / p95 / p99 are read from it by linear interpolation within
//! the bucket that holds the rank. Each quantile is scored as a series of its
//! own, keyed by [`derived_series_key`]; the histogram's mean stays on the
//! point's own series key (see `metric::PointValue::Histogram`). Summaries
//! carry their quantiles already and are read directly.
//!
//! The previous point's bucket counts (the only state the cumulative → delta
//! conversion needs) are kept in a detector series of their own
//! ([`BUCKET_STATE_SUFFIX`]), so they count against the cap on tracked
//! series, and are bounded by [`MAX_BUCKETS`]: an exponential histogram with
//! more buckets is downscaled (adjacent buckets merged, as the OTel SDK does)
//! until it fits; an explicit-bucket histogram with more buckets gets no
//! quantile series (its mean is still scored).

use serde::{Deserialize, Serialize};

use super::keys::{key_hash, KeyHash};

/// Quantiles derived from every histogram, with the suffix of their series key.
pub const QUANTILES: [(f64, &str); 3] = [(0.5, "p50"), (0.95, "p95"), (0.99, "p99")];

/// Suffix of the series that holds a cumulative histogram's previous bucket counts.
pub const BUCKET_STATE_SUFFIX: &str = "buckets";

/// Most bucket counts kept per histogram series (positive and negative
/// buckets together; the OTel SDK's exponential histograms default to 160
/// buckets per side).
pub const MAX_BUCKETS: usize = 320;

/// Key of a series derived from the point series `series` (resource +
/// metric name + point attributes, as `train::doc::series_key` builds it):
/// the hash of the series key's little-endian bytes and `suffix` (one of
/// the [`QUANTILES`] names, or [`BUCKET_STATE_SUFFIX`]). Public so that
/// `train` can build the same keys from stored documents.
pub fn derived_series_key(series: KeyHash, suffix: &str) -> KeyHash {
    key_hash(&[&series.to_le_bytes(), suffix.as_bytes()])
}

/// One side (positive or negative) of an exponential histogram's buckets.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ExpSide<'a> {
    /// Bucket index of `counts[0]`.
    pub offset: i32,
    /// Bucket counts.
    pub counts: &'a [u64],
}

/// The buckets of a histogram point, as they came.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Buckets<'a> {
    /// Explicit bounds: bucket i holds (bounds[i−1], bounds[i]]; the first is
    /// open below, the last open above (`counts.len() == bounds.len() + 1`).
    Explicit {
        bounds: &'a [f64],
        counts: &'a [u64],
    },
    /// Base-2 exponential buckets: index i holds (b^i, b^(i+1)] with
    /// b = 2^(2^−scale); negative values mirror it; the zero bucket holds
    /// [−zero_threshold, zero_threshold].
    Exponential {
        scale: i32,
        zero_count: u64,
        zero_threshold: f64,
        positive: ExpSide<'a>,
        negative: ExpSide<'a>,
    },
}

/// A histogram point reduced to what the quantile series need.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HistogramObs<'a> {
    pub buckets: Buckets<'a>,
    /// Cumulative temporality (else delta).
    pub cumulative: bool,
    /// The point's start time (a new one is a reset).
    pub start_ns: u64,
    /// Smallest and largest observation, when the point carries them (they
    /// bound the open-ended buckets; for cumulative points they cover the
    /// whole stream, so they still bound each interval).
    pub min: Option<f64>,
    pub max: Option<f64>,
}

/// Why a histogram point gives no quantiles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HistogramError {
    /// Bucket counts and bounds do not match.
    #[error(
        "explicit histogram has {counts} bucket counts for {bounds} bounds (needs bounds + 1)"
    )]
    Shape { counts: usize, bounds: usize },
    /// Bounds not strictly increasing, or not finite.
    #[error("explicit histogram bounds are not finite and strictly increasing")]
    Bounds,
    /// More explicit buckets than a series keeps.
    #[error("explicit histogram has {0} buckets, more than the {MAX_BUCKETS} kept per series")]
    TooManyBuckets(usize),
    /// Exponential scale outside the range the spec allows.
    #[error("exponential histogram scale {0} is outside -10..=20")]
    Scale(i32),
}

/// The observations of one interval, as buckets (lower, upper, count) in
/// increasing order; a bound may be infinite.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Distribution {
    buckets: Vec<(f64, f64, u64)>,
}

impl Distribution {
    /// Observations in the interval.
    pub fn count(&self) -> u64 {
        self.buckets.iter().fold(0u64, |a, b| a.saturating_add(b.2))
    }

    /// The `q` quantile, interpolated linearly within the bucket that holds
    /// the rank; an open-ended bucket gives its finite bound (or `min` /
    /// `max` when known). `None` when the interval holds no observation.
    pub fn quantile(&self, q: f64, min: Option<f64>, max: Option<f64>) -> Option<f64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * total as f64;
        let mut below = 0u64;
        let last = self.buckets.iter().rposition(|b| b.2 > 0)?;
        for (i, &(lo, hi, c)) in self.buckets.iter().enumerate() {
            if c == 0 {
                continue;
            }
            if below.saturating_add(c) as f64 >= rank || i == last {
                let lo = if lo.is_finite() {
                    lo
                } else {
                    min.unwrap_or(hi)
                };
                let hi = if hi.is_finite() {
                    hi
                } else {
                    max.unwrap_or(lo)
                };
                let (lo, hi) = (lo.min(hi), hi.max(lo));
                let frac = ((rank - below as f64) / c as f64).clamp(0.0, 1.0);
                let mut v = lo + frac * (hi - lo);
                if let Some(m) = min {
                    v = v.max(m);
                }
                if let Some(m) = max {
                    v = v.min(m);
                }
                return Some(v);
            }
            below = below.saturating_add(c);
        }
        None
    }
}

/// The previous point of a cumulative histogram series (bounded by [`MAX_BUCKETS`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BucketMemory {
    start_ns: u64,
    layout: Layout,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
enum Layout {
    #[default]
    Empty,
    Explicit {
        /// Hash of the bounds' bits (a changed layout is not a delta).
        bounds: u64,
        counts: Vec<u64>,
    },
    Exponential {
        scale: i32,
        zero: u64,
        pos: Side,
        neg: Side,
    },
}

/// One side of an exponential histogram, owned.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Side {
    offset: i64,
    counts: Vec<u64>,
}

impl Side {
    fn of(s: &ExpSide<'_>) -> Self {
        // Trailing and leading zero buckets carry nothing; trimming keeps the state small.
        let first = s.counts.iter().position(|&c| c > 0);
        let last = s.counts.iter().rposition(|&c| c > 0);
        match (first, last) {
            (Some(a), Some(b)) => Side {
                offset: i64::from(s.offset) + a as i64,
                counts: s.counts[a..=b].to_vec(),
            },
            _ => Side::default(),
        }
    }

    /// The same counts at a scale `by` steps coarser (2^by buckets merge into one).
    fn downscale(&self, by: u32) -> Side {
        if by == 0 || self.counts.is_empty() {
            return self.clone();
        }
        let by = by.min(31);
        let offset = self.offset >> by;
        let last = (self.offset + self.counts.len() as i64 - 1) >> by;
        let mut counts = vec![0u64; (last - offset + 1) as usize];
        for (i, &c) in self.counts.iter().enumerate() {
            let idx = (self.offset + i as i64) >> by;
            let slot = &mut counts[(idx - offset) as usize];
            *slot = slot.saturating_add(c);
        }
        Side { offset, counts }
    }

    fn get(&self, idx: i64) -> u64 {
        let i = idx - self.offset;
        if i < 0 {
            return 0;
        }
        self.counts.get(i as usize).copied().unwrap_or(0)
    }

    /// `self − prev` bucket by bucket; `None` when some bucket went down (a reset).
    fn minus(&self, prev: &Side) -> Option<Side> {
        let mut out = self.clone();
        for (i, c) in out.counts.iter_mut().enumerate() {
            *c = c.checked_sub(prev.get(self.offset + i as i64))?;
        }
        // A bucket of the previous point outside this one's range went to zero.
        let lost = prev.counts.iter().enumerate().any(|(i, &c)| {
            let idx = prev.offset + i as i64;
            c > 0 && (idx < self.offset || idx >= self.offset + self.counts.len() as i64)
        });
        (!lost).then_some(out)
    }
}

/// Steps of downscaling that make both sides fit in `MAX_BUCKETS` together.
fn fitting_downscale(pos: &Side, neg: &Side) -> u32 {
    let mut by = 0;
    while by < 31 {
        let n = pos.downscale(by).counts.len() + neg.downscale(by).counts.len();
        if n <= MAX_BUCKETS {
            return by;
        }
        by += 1;
    }
    by
}

fn bounds_hash(bounds: &[f64]) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for b in bounds {
        h.update(&b.to_bits().to_le_bytes());
    }
    h.digest()
}

fn explicit_distribution(bounds: &[f64], counts: &[u64]) -> Distribution {
    let buckets = counts
        .iter()
        .enumerate()
        .map(|(i, &c)| {
            let lo = if i == 0 {
                f64::NEG_INFINITY
            } else {
                bounds[i - 1]
            };
            let hi = bounds.get(i).copied().unwrap_or(f64::INFINITY);
            (lo, hi, c)
        })
        .collect();
    Distribution { buckets }
}

fn exponential_distribution(
    scale: i32,
    zero: u64,
    zero_threshold: f64,
    pos: &Side,
    neg: &Side,
) -> Distribution {
    // Lower bound of bucket `idx`: 2^(idx · 2^−scale).
    let bound = |idx: i64| (idx as f64 * (-f64::from(scale)).exp2()).exp2();
    let mut buckets = Vec::with_capacity(pos.counts.len() + neg.counts.len() + 1);
    for (i, &c) in neg.counts.iter().enumerate().rev() {
        let idx = neg.offset + i as i64;
        buckets.push((-bound(idx + 1), -bound(idx), c));
    }
    let zt = zero_threshold.abs();
    buckets.push((-zt, zt, zero));
    for (i, &c) in pos.counts.iter().enumerate() {
        let idx = pos.offset + i as i64;
        buckets.push((bound(idx), bound(idx + 1), c));
    }
    Distribution { buckets }
}

impl BucketMemory {
    /// Bytes this memory holds on the heap.
    pub fn heap_bytes(&self) -> usize {
        let n = match &self.layout {
            Layout::Empty => 0,
            Layout::Explicit { counts, .. } => counts.capacity(),
            Layout::Exponential { pos, neg, .. } => pos.counts.capacity() + neg.counts.capacity(),
        };
        n * std::mem::size_of::<u64>()
    }

    /// The distribution of the observations since the previous point (the
    /// point itself for delta temporality); `Ok(None)` when there is nothing
    /// to derive yet (first cumulative point, a changed bucket layout).
    /// Cumulative points are remembered for the next call.
    pub fn interval(
        &mut self,
        obs: &HistogramObs<'_>,
    ) -> Result<Option<Distribution>, HistogramError> {
        match obs.buckets {
            Buckets::Explicit { bounds, counts } => {
                if counts.len() != bounds.len() + 1 {
                    return Err(HistogramError::Shape {
                        counts: counts.len(),
                        bounds: bounds.len(),
                    });
                }
                if bounds.iter().any(|b| !b.is_finite()) || bounds.windows(2).any(|w| w[0] >= w[1])
                {
                    return Err(HistogramError::Bounds);
                }
                if counts.len() > MAX_BUCKETS {
                    return Err(HistogramError::TooManyBuckets(counts.len()));
                }
                if !obs.cumulative {
                    return Ok(Some(explicit_distribution(bounds, counts)));
                }
                let hash = bounds_hash(bounds);
                let delta = match &self.layout {
                    Layout::Explicit {
                        bounds: h,
                        counts: prev,
                    } if *h == hash => {
                        let diff: Option<Vec<u64>> = counts
                            .iter()
                            .zip(prev)
                            .map(|(c, p)| c.checked_sub(*p))
                            .collect();
                        match diff {
                            Some(d) if obs.start_ns == self.start_ns => Some(d),
                            // A reset: the new counts are the observations since it.
                            _ => Some(counts.to_vec()),
                        }
                    }
                    // First point, or the bounds changed: nothing to compare with.
                    _ => None,
                };
                self.start_ns = obs.start_ns;
                self.layout = Layout::Explicit {
                    bounds: hash,
                    counts: counts.to_vec(),
                };
                Ok(delta.map(|d| explicit_distribution(bounds, &d)))
            }
            Buckets::Exponential {
                scale,
                zero_count,
                zero_threshold,
                positive,
                negative,
            } => {
                if !(-10..=20).contains(&scale) {
                    return Err(HistogramError::Scale(scale));
                }
                let (pos, neg) = (Side::of(&positive), Side::of(&negative));
                let by = fitting_downscale(&pos, &neg);
                let (scale, pos, neg) = (scale - by as i32, pos.downscale(by), neg.downscale(by));
                if !obs.cumulative {
                    return Ok(Some(exponential_distribution(
                        scale,
                        zero_count,
                        zero_threshold,
                        &pos,
                        &neg,
                    )));
                }
                let delta = match &self.layout {
                    Layout::Exponential {
                        scale: ps,
                        zero: pz,
                        pos: pp,
                        neg: pn,
                    } => {
                        // Compare at the coarser of the two scales (an SDK
                        // only ever lowers the scale of a cumulative stream).
                        let common = scale.min(*ps);
                        let (cp, cn) = (
                            pos.downscale((scale - common) as u32),
                            neg.downscale((scale - common) as u32),
                        );
                        let (qp, qn) = (
                            pp.downscale((*ps - common) as u32),
                            pn.downscale((*ps - common) as u32),
                        );
                        let diff = match (cp.minus(&qp), cn.minus(&qn), zero_count.checked_sub(*pz))
                        {
                            (Some(p), Some(n), Some(z)) if obs.start_ns == self.start_ns => {
                                Some((z, p, n))
                            }
                            _ => None,
                        };
                        Some(match diff {
                            Some((z, p, n)) => (common, z, p, n),
                            // A reset: the new counts are the observations since it.
                            None => (scale, zero_count, pos.clone(), neg.clone()),
                        })
                    }
                    _ => None,
                };
                self.start_ns = obs.start_ns;
                self.layout = Layout::Exponential {
                    scale,
                    zero: zero_count,
                    pos,
                    neg,
                };
                Ok(
                    delta
                        .map(|(s, z, p, n)| exponential_distribution(s, z, zero_threshold, &p, &n)),
                )
            }
        }
    }
}

/// The values of a summary point at the [`QUANTILES`], in that order (a
/// summary that does not report a quantile gives `None` for it).
pub fn summary_quantiles(values: impl Iterator<Item = (f64, f64)> + Clone) -> [Option<f64>; 3] {
    QUANTILES.map(|(q, _)| {
        values
            .clone()
            .find(|(at, v)| (at - q).abs() < 1e-9 && v.is_finite())
            .map(|(_, v)| v)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, Rng, SeedableRng};

    fn bucket_counts(sample: &[f64], bounds: &[f64]) -> Vec<u64> {
        let mut counts = vec![0u64; bounds.len() + 1];
        for &x in sample {
            let i = bounds.partition_point(|&b| b < x);
            counts[i] += 1;
        }
        counts
    }

    fn true_quantile(sample: &[f64], q: f64) -> f64 {
        let mut s = sample.to_vec();
        s.sort_by(f64::total_cmp);
        s[((q * s.len() as f64).ceil() as usize).clamp(1, s.len()) - 1]
    }

    fn delta_explicit<'a>(bounds: &'a [f64], counts: &'a [u64]) -> HistogramObs<'a> {
        HistogramObs {
            buckets: Buckets::Explicit { bounds, counts },
            cumulative: false,
            start_ns: 0,
            min: None,
            max: None,
        }
    }

    #[test]
    fn uniform_sample_quantiles_within_a_bucket_of_the_truth() {
        let mut rng = StdRng::seed_from_u64(3);
        let sample: Vec<f64> = (0..20_000).map(|_| rng.random_range(0.0..1000.0)).collect();
        let bounds: Vec<f64> = (1..20).map(|i| f64::from(i) * 50.0).collect();
        let counts = bucket_counts(&sample, &bounds);
        let dist = BucketMemory::default()
            .interval(&delta_explicit(&bounds, &counts))
            .unwrap()
            .unwrap();
        for q in [0.5, 0.95] {
            let got = dist.quantile(q, None, None).unwrap();
            let truth = true_quantile(&sample, q);
            // Linear interpolation is exact for a uniform sample up to noise.
            assert!((got - truth).abs() < 50.0, "q{q}: {got} vs {truth}");
            assert!(
                (got - truth).abs() < 10.0,
                "q{q}: {got} vs {truth} (interpolated)"
            );
        }
    }

    #[test]
    fn exponential_sample_quantiles_within_a_bucket_of_the_truth() {
        let mut rng = StdRng::seed_from_u64(4);
        // Exponential with mean 100 ms.
        let sample: Vec<f64> = (0..50_000)
            .map(|_| -100.0 * (1.0 - rng.random_range(0.0..1.0f64)).ln())
            .collect();
        let bounds = [
            5.0, 10.0, 25.0, 50.0, 75.0, 100.0, 250.0, 500.0, 750.0, 1000.0, 2500.0,
        ];
        let counts = bucket_counts(&sample, &bounds);
        let dist = BucketMemory::default()
            .interval(&delta_explicit(&bounds, &counts))
            .unwrap()
            .unwrap();
        for q in [0.5, 0.95, 0.99] {
            let got = dist.quantile(q, None, None).unwrap();
            let truth = true_quantile(&sample, q);
            let i = bounds.partition_point(|&b| b < truth);
            let width = bounds[i] - bounds[i - 1];
            assert!(
                (got - truth).abs() <= width,
                "q{q}: {got} vs {truth} (bucket width {width})"
            );
        }
    }

    /// An exponential histogram at `scale` of `sample` (positive values only).
    fn exp_buckets(sample: &[f64], scale: i32) -> (i32, Vec<u64>) {
        let idx = |x: f64| (x.log2() * f64::from(scale).exp2()).ceil() as i32 - 1;
        let lo = sample.iter().map(|&x| idx(x)).min().unwrap();
        let hi = sample.iter().map(|&x| idx(x)).max().unwrap();
        let mut counts = vec![0u64; (hi - lo + 1) as usize];
        for &x in sample {
            counts[(idx(x) - lo) as usize] += 1;
        }
        (lo, counts)
    }

    #[test]
    fn exponential_histogram_quantiles_within_relative_bucket_error() {
        let mut rng = StdRng::seed_from_u64(5);
        let sample: Vec<f64> = (0..20_000)
            .map(|_| -100.0 * (1.0 - rng.random_range(0.0..1.0f64)).ln() + 0.001)
            .collect();
        let scale = 4; // buckets 2^(1/16) wide: 4.4% relative
        let (offset, counts) = exp_buckets(&sample, scale);
        let obs = HistogramObs {
            buckets: Buckets::Exponential {
                scale,
                zero_count: 0,
                zero_threshold: 0.0,
                positive: ExpSide {
                    offset,
                    counts: &counts,
                },
                negative: ExpSide {
                    offset: 0,
                    counts: &[],
                },
            },
            cumulative: false,
            start_ns: 0,
            min: None,
            max: None,
        };
        let dist = BucketMemory::default().interval(&obs).unwrap().unwrap();
        for q in [0.5, 0.95, 0.99] {
            let got = dist.quantile(q, None, None).unwrap();
            let truth = true_quantile(&sample, q);
            let rel = (got / truth - 1.0).abs();
            assert!(rel < 0.045, "q{q}: {got} vs {truth}");
        }
    }

    #[test]
    fn negative_and_zero_buckets_are_ordered() {
        // 10 values in (−4, −2], 10 at zero, 10 in (2, 4] at scale 0.
        let obs = HistogramObs {
            buckets: Buckets::Exponential {
                scale: 0,
                zero_count: 10,
                zero_threshold: 0.0,
                positive: ExpSide {
                    offset: 1,
                    counts: &[10],
                },
                negative: ExpSide {
                    offset: 1,
                    counts: &[10],
                },
            },
            cumulative: false,
            start_ns: 0,
            min: None,
            max: None,
        };
        let d = BucketMemory::default().interval(&obs).unwrap().unwrap();
        assert_eq!(d.quantile(0.5, None, None), Some(0.0));
        let p10 = d.quantile(0.1, None, None).unwrap();
        assert!((-4.0..=-2.0).contains(&p10), "{p10}");
        let p95 = d.quantile(0.95, None, None).unwrap();
        assert!((2.0..=4.0).contains(&p95), "{p95}");
    }

    fn cumulative<'a>(bounds: &'a [f64], counts: &'a [u64], start: u64) -> HistogramObs<'a> {
        HistogramObs {
            cumulative: true,
            start_ns: start,
            ..delta_explicit(bounds, counts)
        }
    }

    #[test]
    fn cumulative_points_become_interval_distributions_and_resets_are_handled() {
        let bounds = [10.0, 20.0, 30.0];
        let mut m = BucketMemory::default();
        // First point: nothing to derive yet.
        assert_eq!(
            m.interval(&cumulative(&bounds, &[100, 0, 0, 0], 1)),
            Ok(None)
        );
        // Next interval: 10 new observations, all in (20, 30].
        let d = m
            .interval(&cumulative(&bounds, &[100, 0, 10, 0], 1))
            .unwrap()
            .unwrap();
        assert_eq!(d.count(), 10);
        let p50 = d.quantile(0.5, None, None).unwrap();
        assert!((20.0..=30.0).contains(&p50), "{p50}");
        // A counter reset (a bucket went down): the new counts are the interval.
        let d = m
            .interval(&cumulative(&bounds, &[0, 5, 0, 0], 1))
            .unwrap()
            .unwrap();
        assert_eq!(d.count(), 5);
        assert!((10.0..=20.0).contains(&d.quantile(0.5, None, None).unwrap()));
        // A new start time is a reset too, even if counts grew.
        let d = m
            .interval(&cumulative(&bounds, &[0, 6, 0, 3], 2))
            .unwrap()
            .unwrap();
        assert_eq!(d.count(), 9);
        // Changed bounds: no comparison possible, remembered for next time.
        let other = [10.0, 20.0, 40.0];
        assert_eq!(m.interval(&cumulative(&other, &[0, 6, 0, 3], 2)), Ok(None));
        let d = m
            .interval(&cumulative(&other, &[0, 6, 4, 3], 2))
            .unwrap()
            .unwrap();
        assert_eq!(d.count(), 4);
        // An interval without observations has no quantiles.
        let d = m
            .interval(&cumulative(&other, &[0, 6, 4, 3], 2))
            .unwrap()
            .unwrap();
        assert_eq!(d.quantile(0.5, None, None), None);
    }

    #[test]
    fn cumulative_exponential_histogram_across_a_scale_change() {
        let mut m = BucketMemory::default();
        let obs = |scale, offset, counts: &'static [u64]| HistogramObs {
            buckets: Buckets::Exponential {
                scale,
                zero_count: 0,
                zero_threshold: 0.0,
                positive: ExpSide { offset, counts },
                negative: ExpSide {
                    offset: 0,
                    counts: &[],
                },
            },
            cumulative: true,
            start_ns: 7,
            min: None,
            max: None,
        };
        // Scale 1: buckets (2^(i/2), 2^((i+1)/2)]; indexes 2..5 cover (2, 8].
        assert_eq!(m.interval(&obs(1, 2, &[5, 5, 0, 0])), Ok(None));
        // The SDK lowers the scale to 0 (pairs merge): indexes 1..2 cover (2, 8];
        // 10 new observations in (4, 8].
        let d = m.interval(&obs(0, 1, &[10, 10])).unwrap().unwrap();
        assert_eq!(d.count(), 10);
        let p50 = d.quantile(0.5, None, None).unwrap();
        assert!((4.0..=8.0).contains(&p50), "{p50}");
    }

    #[test]
    fn wide_exponential_histograms_are_downscaled_to_fit() {
        let counts: Vec<u64> = vec![1; 1000];
        let obs = HistogramObs {
            buckets: Buckets::Exponential {
                scale: 8,
                zero_count: 0,
                zero_threshold: 0.0,
                positive: ExpSide {
                    offset: -500,
                    counts: &counts,
                },
                negative: ExpSide {
                    offset: 0,
                    counts: &counts,
                },
            },
            cumulative: true,
            start_ns: 1,
            min: None,
            max: None,
        };
        let mut m = BucketMemory::default();
        assert_eq!(m.interval(&obs), Ok(None));
        assert!(m.heap_bytes() <= MAX_BUCKETS * 8, "{}", m.heap_bytes());
        let d = m.interval(&obs).unwrap().unwrap();
        assert_eq!(d.count(), 0);
    }

    #[test]
    fn bad_shapes_are_refused() {
        let mut m = BucketMemory::default();
        assert_eq!(
            m.interval(&delta_explicit(&[1.0, 2.0], &[1, 2])),
            Err(HistogramError::Shape {
                counts: 2,
                bounds: 2
            })
        );
        assert_eq!(
            m.interval(&delta_explicit(&[2.0, 1.0], &[1, 2, 3])),
            Err(HistogramError::Bounds)
        );
        let bounds: Vec<f64> = (0..MAX_BUCKETS).map(|i| i as f64).collect();
        let counts = vec![0; MAX_BUCKETS + 1];
        assert_eq!(
            m.interval(&delta_explicit(&bounds, &counts)),
            Err(HistogramError::TooManyBuckets(MAX_BUCKETS + 1))
        );
    }

    #[test]
    fn extreme_points_do_not_panic() {
        let big = [u64::MAX, u64::MAX, 1];
        for scale in [-10, 0, 20] {
            for offset in [i32::MIN, -1, 0, i32::MAX - 1, i32::MAX] {
                for cumulative in [false, true] {
                    let obs = HistogramObs {
                        buckets: Buckets::Exponential {
                            scale,
                            zero_count: u64::MAX,
                            zero_threshold: f64::MAX,
                            positive: ExpSide {
                                offset,
                                counts: &big,
                            },
                            negative: ExpSide {
                                offset,
                                counts: &big,
                            },
                        },
                        cumulative,
                        start_ns: 1,
                        min: Some(f64::NAN),
                        max: None,
                    };
                    let mut m = BucketMemory::default();
                    for _ in 0..2 {
                        if let Ok(Some(d)) = m.interval(&obs) {
                            for (q, _) in QUANTILES {
                                let _ = d.quantile(q, obs.min, obs.max);
                            }
                        }
                    }
                }
            }
        }
        let d = explicit_distribution(&[1.0, 2.0], &big);
        assert!(d.quantile(0.99, None, None).is_some());
    }

    #[test]
    fn open_ended_buckets_use_min_and_max() {
        let d = explicit_distribution(&[10.0], &[0, 10]);
        assert_eq!(d.quantile(0.99, None, None), Some(10.0));
        let v = d.quantile(0.5, Some(11.0), Some(30.0)).unwrap();
        assert!((v - 20.0).abs() < 1e-9, "{v}");
    }

    #[test]
    fn summary_quantiles_are_picked_by_rank() {
        let vals = [(0.5, 3.0), (0.9, 7.0), (0.99, 12.0)];
        assert_eq!(
            summary_quantiles(vals.iter().copied()),
            [Some(3.0), None, Some(12.0)]
        );
    }

    #[test]
    fn derived_keys_differ_from_the_series_and_each_other() {
        let s = key_hash(&[b"{}", b"latency", b"{}"]);
        let keys: Vec<KeyHash> = QUANTILES
            .iter()
            .map(|(_, n)| derived_series_key(s, n))
            .chain([derived_series_key(s, BUCKET_STATE_SUFFIX), s])
            .collect();
        let unique: std::collections::HashSet<_> = keys.iter().collect();
        assert_eq!(unique.len(), keys.len());
        assert_eq!(derived_series_key(s, "p99"), derived_series_key(s, "p99"));
    }
}
