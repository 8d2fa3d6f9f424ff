//! Error-rate baseline: decayed error / total counts, and a binomial test of
//! the current interval against the baseline rate (statrs).

use statrs::distribution::{Binomial, DiscreteCDF};

use super::{score_from_tail_probability, Explanation, Verdict, ANOMALOUS_SCORE, ANOMALOUS_WEIGHT};

/// Settings shared by every rate key.
#[derive(Debug, Clone, Copy)]
pub struct RateParams {
    /// Length of a judging interval, ns.
    pub interval_ns: u64,
    /// Half-life of the baseline, ns.
    pub half_life_ns: u64,
    /// Records of history needed before scoring.
    pub min_samples: u64,
}

/// Per-key error-rate state.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RateState {
    base_total: f64,
    base_errors: f64,
    interval_start_ns: u64,
    cur_total: u64,
    cur_errors: u64,
    /// Highest score given in the current interval.
    cur_max_score: f32,
}

impl RateState {
    fn roll(&mut self, now_ns: u64, p: &RateParams) {
        if self.interval_start_ns == 0 {
            self.interval_start_ns = now_ns - now_ns % p.interval_ns.max(1);
            return;
        }
        if now_ns < self.interval_start_ns + p.interval_ns {
            return;
        }
        // Close the interval: fold it into the baseline (anomalous intervals
        // barely, so a burst does not become the normal rate), then decay.
        let elapsed = now_ns - self.interval_start_ns;
        let w = if self.cur_max_score >= ANOMALOUS_SCORE {
            ANOMALOUS_WEIGHT as f64
        } else {
            1.0
        };
        self.base_total += w * self.cur_total as f64;
        self.base_errors += w * self.cur_errors as f64;
        let decay = 0.5f64.powf(elapsed as f64 / p.half_life_ns.max(1) as f64);
        self.base_total *= decay;
        self.base_errors *= decay;
        self.cur_total = 0;
        self.cur_errors = 0;
        self.cur_max_score = 0.0;
        self.interval_start_ns = now_ns - now_ns % p.interval_ns.max(1);
    }

    /// Continues after a gap: the next record starts a new interval without
    /// decaying the baseline for the time in between.
    pub fn resume(&mut self) {
        self.interval_start_ns = 0;
        self.cur_total = 0;
        self.cur_errors = 0;
        self.cur_max_score = 0.0;
    }

    /// Baseline error rate with a weak prior (half an error in one record).
    pub fn baseline_rate(&self) -> f64 {
        (self.base_errors + 0.5) / (self.base_total + 1.0)
    }

    /// Records one outcome at `now_ns` and judges it: error records get the
    /// binomial tail probability of this interval's error count; successes score 0.
    pub fn observe(&mut self, now_ns: u64, is_error: bool, p: &RateParams) -> Verdict {
        self.roll(now_ns, p);
        self.cur_total += 1;
        if is_error {
            self.cur_errors += 1;
        }
        let seen = self.base_total.round() as u64;
        if (self.base_total as u64) < p.min_samples {
            return Verdict::cold_start(seen, p.min_samples);
        }
        let rate = self.baseline_rate();
        if !is_error {
            return Verdict::scored(
                0.0,
                Explanation::ErrorRate {
                    errors: self.cur_errors,
                    total: self.cur_total,
                    baseline_rate: rate,
                },
            );
        }
        let tail = binomial_sf(self.cur_errors, self.cur_total, rate);
        let score = score_from_tail_probability(tail);
        if score > self.cur_max_score {
            self.cur_max_score = score;
        }
        Verdict::scored(
            score,
            Explanation::ErrorRate {
                errors: self.cur_errors,
                total: self.cur_total,
                baseline_rate: rate,
            },
        )
    }
}

/// P(X ≥ k) for X ~ Binomial(n, p).
pub fn binomial_sf(k: u64, n: u64, p: f64) -> f64 {
    if k == 0 {
        return 1.0;
    }
    match Binomial::new(p.clamp(0.0, 1.0), n) {
        Ok(b) => b.sf(k - 1),
        Err(_) => 1.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn params() -> RateParams {
        RateParams {
            interval_ns: 10 * S,
            half_life_ns: 600 * S,
            min_samples: 50,
        }
    }

    #[test]
    fn binomial_tail_matches_exact_sum() {
        // P(X >= 2 | n=3, p=0.5) = (3 + 1) / 8
        assert!((binomial_sf(2, 3, 0.5) - 0.5).abs() < 1e-12);
        assert_eq!(binomial_sf(0, 10, 0.1), 1.0);
    }

    #[test]
    fn error_burst_scores_high_and_steady_errors_do_not() {
        let p = params();
        let mut st = RateState::default();
        let mut t = 1_000 * S;
        // 1% errors, 100 records per second, for 10 minutes.
        let mut max_steady = 0.0f32;
        for i in 0..60_000u64 {
            t += S / 100;
            let v = st.observe(t, i % 100 == 0, &p);
            if i > 5_000 {
                max_steady = max_steady.max(v.score);
            }
        }
        assert!(max_steady < 25.0, "steady 1% errors scored {max_steady}");
        // Burst: 30% errors.
        let mut max_burst = 0.0f32;
        for i in 0..1_000u64 {
            t += S / 100;
            let v = st.observe(t, i % 3 == 0, &p);
            max_burst = max_burst.max(v.score);
        }
        assert!(max_burst >= 75.0, "burst scored {max_burst}");
    }

    #[test]
    fn cold_start_is_not_scored() {
        let p = params();
        let mut st = RateState::default();
        let v = st.observe(S, true, &p);
        assert_eq!(v.severity, super::super::Severity::ColdStart);
        assert_eq!(v.score, 0.0);
    }
}
