//! Anomaly likelihood: how unusual the recent raw scores of a series are
//! against their own long-run distribution (after Numenta's anomaly
//! likelihood, Ahmad et al. 2017).
//!
//! A noisy series produces moderate raw scores all the time; a quiet one
//! almost never does. Comparing the short-run mean of the raw scores with
//! their long-run mean and spread turns "a surprising point" into "a
//! surprising change in how often this series surprises us", which is what
//! separates a real incident from a series that is always jittery.

use statrs::function::erf::erfc;

/// −log10 of the two-sided normal tail probability of `z`, exact where the
/// tail is representable and from the asymptotic expansion beyond.
pub fn normal_surprise(z: f64) -> f64 {
    let z = z.abs();
    if !z.is_finite() {
        return f64::MAX;
    }
    let tail = erfc(z / std::f64::consts::SQRT_2);
    if tail > 1e-300 {
        return -tail.log10();
    }
    // 2·φ(z)/z: −log10 = (z²/2 + ln z + ln(√(π/2))) / ln 10.
    (0.5 * z * z + z.ln() + 0.5 * (std::f64::consts::PI / 2.0).ln()) / std::f64::consts::LN_10
}

/// Raw scores averaged for the short-run view (Numenta uses 10).
pub const SHORT_WINDOW: usize = 10;
/// Floor on the long-run variance of the short-run mean (Numenta's 0.0003),
/// so a series whose raw scores were always 0 does not make every blip certain.
const VARIANCE_FLOOR: f64 = 3e-4;

/// Streaming likelihood state; a few dozen bytes.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Likelihood {
    recent: [f32; SHORT_WINDOW],
    next: u8,
    filled: u8,
    mean: f64,
    var: f64,
    n: u64,
}

impl Likelihood {
    /// Adds a raw score in [0, 1] and returns the surprise (−log10 of the
    /// one-sided tail probability) of the short-run mean under the long-run
    /// distribution: 0 is usual, 5 is a 1-in-100,000 event.
    ///
    /// `memory` is the effective number of points in the long-run view; the
    /// long run learns from the short-run mean before it is compared, with a
    /// weight `learn` (0 keeps an anomalous period out of the long run).
    pub fn update(&mut self, raw: f64, memory: u64, learn: f64) -> f64 {
        let raw = raw.clamp(0.0, 1.0);
        self.recent[usize::from(self.next)] = raw as f32;
        self.next = ((usize::from(self.next) + 1) % SHORT_WINDOW) as u8;
        self.filled = (usize::from(self.filled) + 1).min(SHORT_WINDOW) as u8;
        let short = self.short_mean();
        let sd = self.var.max(VARIANCE_FLOOR).sqrt();
        let surprise = if self.n == 0 {
            0.0
        } else {
            // One-sided: only more surprise than usual is unusual.
            normal_surprise((short - self.mean) / sd) - std::f64::consts::LOG10_2
        };
        self.learn(short, memory, learn);
        surprise.max(0.0)
    }

    fn learn(&mut self, short: f64, memory: u64, weight: f64) {
        self.n += 1;
        let alpha = weight / (self.n.min(memory.max(1)) as f64);
        let d = short - self.mean;
        self.mean += alpha * d;
        self.var = (1.0 - alpha) * (self.var + alpha * d * d);
    }

    /// Mean of the last (up to) `SHORT_WINDOW` raw scores.
    pub fn short_mean(&self) -> f64 {
        let k = usize::from(self.filled);
        if k == 0 {
            return 0.0;
        }
        self.recent[..k].iter().map(|&v| f64::from(v)).sum::<f64>() / k as f64
    }

    /// Long-run mean of the short-run mean.
    pub fn long_mean(&self) -> f64 {
        self.mean
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quiet_series_makes_a_burst_unlikely_noisy_one_does_not() {
        use rand::{rngs::StdRng, Rng, SeedableRng};
        let mut rng = StdRng::seed_from_u64(7);
        let mut quiet = Likelihood::default();
        let mut noisy = Likelihood::default();
        for _ in 0..2_000 {
            quiet.update(0.0, 1_000, 1.0);
            // Moderate surprises all the time: normal for this series.
            noisy.update(rng.random_range(0.0..0.9), 1_000, 1.0);
        }
        let mut quiet_surprise = 0.0f64;
        let mut noisy_surprise = 0.0f64;
        for _ in 0..3 {
            quiet_surprise = quiet_surprise.max(quiet.update(0.6, 1_000, 1.0));
            noisy_surprise = noisy_surprise.max(noisy.update(0.6, 1_000, 1.0));
        }
        assert!(quiet_surprise > 5.0, "quiet {quiet_surprise}");
        assert!(noisy_surprise < 2.0, "noisy {noisy_surprise}");
    }

    #[test]
    fn a_lasting_change_becomes_usual() {
        let mut l = Likelihood::default();
        for _ in 0..500 {
            l.update(0.0, 200, 1.0);
        }
        let first = l.update(1.0, 200, 1.0);
        let mut last = first;
        for _ in 0..2_000 {
            last = l.update(1.0, 200, 1.0);
        }
        assert!(first > 3.0, "{first}");
        assert!(last < 1.0, "{last}");
    }

    #[test]
    fn unlearned_points_stay_unusual() {
        let mut l = Likelihood::default();
        for _ in 0..500 {
            l.update(0.0, 200, 1.0);
        }
        let mut last = 0.0;
        for _ in 0..300 {
            last = l.update(1.0, 200, 0.0);
        }
        assert!(last > 6.0, "{last}");
        assert!(l.long_mean() < 1e-6);
    }
}

#[cfg(test)]
mod surprise_tests {
    use super::normal_surprise;

    #[test]
    fn surprise_is_continuous_past_the_float_range() {
        assert!((normal_surprise(0.0)).abs() < 1e-12);
        // Two-sided tail of 3σ is 0.0027.
        assert!((normal_surprise(3.0) - 2.568).abs() < 1e-3);
        // Where erfc is still representable, the expansion agrees closely.
        let exact = normal_surprise(30.0);
        let z: f64 = 30.0;
        let approx = (0.5 * z * z + z.ln() + 0.5 * (std::f64::consts::PI / 2.0).ln())
            / std::f64::consts::LN_10;
        assert!((exact - approx).abs() < 0.01, "{exact} {approx}");
        assert!(normal_surprise(40.0) > normal_surprise(39.0));
        assert!(normal_surprise(-5.0) == normal_surprise(5.0));
    }
}
