//! A bounded-memory latency sketch with exponential decay.
//!
//! Values are kept in logarithmic buckets (relative accuracy ±`ACCURACY`), so
//! a quantile or a tail probability is within a few percent of the exact
//! answer whatever the scale. Counts decay with a configurable half-life so
//! the sketch describes "the recent past", not all time. Memory is bounded by
//! `MAX_BUCKETS` (f32 counts): at most ~1.6 KiB per sketch.
//!
//! Why not `hdrhistogram`: at 2 significant digits over 1 µs..60 s an HDR
//! histogram holds ~2,400 counters (~9.7 KiB with u32 counts) per key, over
//! the 8 KiB per-key budget, and it has no decay. A log-bucket sketch keeps the
//! same relative accuracy in a fraction of the space.

use serde::{Deserialize, Serialize};

/// Bucket growth factor: each bucket spans 4% of its lower bound (±2% accuracy).
const GAMMA: f64 = 1.04;
/// Smallest tracked value; everything below lands in bucket 0.
const MIN_VALUE: f64 = 1.0;
/// Number of buckets: covers `MIN_VALUE .. MIN_VALUE * GAMMA^MAX_BUCKETS` (1 µs .. ~22 h when values are µs).
pub const MAX_BUCKETS: usize = 640;

/// A decaying log-bucket histogram of positive values.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DecayingSketch {
    /// Index of the first stored bucket.
    offset: u16,
    /// Decayed counts of buckets `offset ..`.
    counts: Vec<f32>,
    /// Sum of `counts` (kept to avoid a pass per query).
    total: f64,
    /// Largest value seen since the last decay epoch, decayed like the counts.
    max: f64,
}

impl Default for DecayingSketch {
    fn default() -> Self {
        Self::new()
    }
}

impl DecayingSketch {
    /// An empty sketch.
    pub fn new() -> Self {
        Self {
            offset: 0,
            counts: Vec::new(),
            total: 0.0,
            max: 0.0,
        }
    }

    fn bucket_of(value: f64) -> usize {
        if value <= MIN_VALUE {
            return 0;
        }
        let idx = (value / MIN_VALUE).ln() / GAMMA.ln();
        (idx as usize).min(MAX_BUCKETS - 1)
    }

    /// Representative value (geometric middle) of bucket `idx`.
    fn bucket_value(idx: usize) -> f64 {
        MIN_VALUE * GAMMA.powf(idx as f64 + 0.5)
    }

    /// Lower bound of bucket `idx`.
    fn bucket_lower(idx: usize) -> f64 {
        if idx == 0 {
            0.0
        } else {
            MIN_VALUE * GAMMA.powi(idx as i32)
        }
    }

    /// Adds `value` with `weight`.
    pub fn add(&mut self, value: f64, weight: f32) {
        if !value.is_finite() || weight <= 0.0 {
            return;
        }
        let idx = Self::bucket_of(value);
        if self.counts.is_empty() {
            self.offset = idx as u16;
            self.counts.push(0.0);
        } else if idx < self.offset as usize {
            let grow = self.offset as usize - idx;
            let mut counts = vec![0.0; grow];
            counts.extend_from_slice(&self.counts);
            self.counts = counts;
            self.offset = idx as u16;
        } else if idx >= self.offset as usize + self.counts.len() {
            self.counts.resize(idx - self.offset as usize + 1, 0.0);
        }
        self.counts[idx - self.offset as usize] += weight;
        self.total += weight as f64;
        // Down-weighted (anomalous) values do not move the reference maximum.
        if weight >= 0.5 && value > self.max {
            self.max = value;
        }
    }

    /// Multiplies every count by `factor` (0..1): exponential forgetting.
    pub fn decay(&mut self, factor: f64) {
        debug_assert!((0.0..=1.0).contains(&factor));
        let f = factor as f32;
        for c in &mut self.counts {
            *c *= f;
        }
        self.total *= factor;
        // Trim buckets that have decayed to nothing, so memory follows the live range.
        let floor = 1e-3_f32;
        while self.counts.last().is_some_and(|c| *c < floor) {
            self.counts.pop();
        }
        let lead = self.counts.iter().take_while(|c| **c < floor).count();
        if lead > 0 {
            self.counts.drain(..lead);
            self.offset += lead as u16;
        }
        if self.counts.is_empty() {
            self.total = 0.0;
            self.max = 0.0;
        } else {
            // The max is only an upper reference for extrapolation: keep it
            // within the live buckets.
            let top = Self::bucket_lower(self.offset as usize + self.counts.len());
            if self.max > top {
                self.max = top;
            }
        }
    }

    /// Decayed number of values in the sketch.
    pub fn count(&self) -> f64 {
        self.total
    }

    /// Largest value still represented.
    pub fn max(&self) -> f64 {
        self.max
    }

    /// Value at quantile `q` (0..=1), or `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.total <= 0.0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * self.total;
        let mut acc = 0.0f64;
        for (i, c) in self.counts.iter().enumerate() {
            acc += *c as f64;
            if acc >= rank {
                return Some(
                    Self::bucket_value(self.offset as usize + i).min(self.max.max(MIN_VALUE)),
                );
            }
        }
        Some(self.max)
    }

    /// Decayed count of values at or above `value` (bucket resolution; the
    /// bucket holding `value` counts half, as its values straddle it).
    pub fn count_at_or_above(&self, value: f64) -> f64 {
        if self.counts.is_empty() {
            return 0.0;
        }
        let idx = Self::bucket_of(value);
        let start = self.offset as usize;
        let end = start + self.counts.len();
        if idx >= end {
            return 0.0;
        }
        if idx < start {
            return self.total;
        }
        let rel = idx - start;
        let above: f64 = self.counts[rel + 1..].iter().map(|c| *c as f64).sum();
        above + self.counts[rel] as f64 * 0.5
    }

    /// Approximate heap + inline size in bytes.
    pub fn memory_bytes(&self) -> usize {
        std::mem::size_of::<Self>() + self.counts.capacity() * std::mem::size_of::<f32>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn quantiles_are_within_relative_accuracy() {
        let mut s = DecayingSketch::new();
        for v in 1..=10_000 {
            s.add(v as f64, 1.0);
        }
        for q in [0.5, 0.9, 0.99, 0.999] {
            let exact = q * 10_000.0;
            let got = s.quantile(q).unwrap();
            assert!(
                (got - exact).abs() / exact < 0.03,
                "q={q} got={got} exact={exact}"
            );
        }
    }

    #[test]
    fn decay_forgets_old_values() {
        let mut s = DecayingSketch::new();
        for _ in 0..1000 {
            s.add(100.0, 1.0);
        }
        for _ in 0..20 {
            s.decay(0.5);
        }
        for _ in 0..10 {
            s.add(1000.0, 1.0);
        }
        let median = s.quantile(0.5).unwrap();
        assert!((median - 1000.0).abs() / 1000.0 < 0.03, "median {median}");
        assert!(s.count() < 11.0);
    }

    #[test]
    fn memory_is_bounded_even_for_extreme_ranges() {
        let mut s = DecayingSketch::new();
        s.add(0.001, 1.0);
        s.add(1e15, 1.0);
        assert!(s.memory_bytes() <= std::mem::size_of::<DecayingSketch>() + MAX_BUCKETS * 4);
    }

    proptest! {
        /// The tail count is between the exact count of values strictly above
        /// the bucket and the exact count at or above the bucket's lower edge.
        #[test]
        fn tail_count_brackets_exact(values in prop::collection::vec(1.0f64..1e10, 1..300), probe in 1.0f64..1e10) {
            let mut s = DecayingSketch::new();
            for v in &values { s.add(*v, 1.0); }
            let got = s.count_at_or_above(probe);
            let lo = probe / GAMMA;
            let hi = probe * GAMMA;
            let exact_low = values.iter().filter(|v| **v >= hi).count() as f64;
            let exact_high = values.iter().filter(|v| **v >= lo).count() as f64;
            prop_assert!(got >= exact_low - 1e-3 && got <= exact_high + 1e-3, "got {} not in [{}, {}]", got, exact_low, exact_high);
            prop_assert!((s.count() - values.len() as f64).abs() < 1e-6 * values.len() as f64 + 1e-3);
        }

        #[test]
        fn quantile_lies_between_min_and_max(values in prop::collection::vec(1.0f64..1e10, 1..300), q in 0.0f64..=1.0) {
            let mut s = DecayingSketch::new();
            for v in &values { s.add(*v, 1.0); }
            let min = values.iter().cloned().fold(f64::INFINITY, f64::min);
            let max = values.iter().cloned().fold(0.0, f64::max);
            let got = s.quantile(q).unwrap();
            prop_assert!(got >= min / GAMMA && got <= max * GAMMA, "{} not in [{}, {}]", got, min, max);
        }
    }
}
