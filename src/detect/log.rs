//! Log detector: the rate of error-or-worse records per service, judged like
//! span errors (binomial test of this interval against the baseline rate).

use super::keys::{key_hash, BoundedMap, MapSnapshot};
use super::rate::{RateParams, RateState};
use super::{Explanation, Verdict};

/// Lowest OTLP severity number counted as an error (SEVERITY_NUMBER_ERROR).
pub const ERROR_SEVERITY: i32 = 17;

/// The log detector for one environment.
#[derive(Debug)]
pub struct LogDetector {
    params: RateParams,
    services: BoundedMap<RateState>,
}

impl LogDetector {
    /// A detector with `params`, tracking at most `max_services` services.
    pub fn new(params: RateParams, max_services: usize) -> Self {
        Self {
            params,
            services: BoundedMap::new(max_services),
        }
    }

    /// The detector's state, for a snapshot.
    pub fn snapshot(&self) -> MapSnapshot<&RateState> {
        self.services.snapshot()
    }

    /// Adds the services of a snapshot to the detector, continuing after a gap.
    pub fn restore(&mut self, snap: MapSnapshot<RateState>) {
        self.services.restore_snapshot(snap);
        for st in self.services.values_mut() {
            st.resume();
        }
    }

    /// Scores one log record of `service` at `time_ns`.
    pub fn observe(&mut self, service: &str, time_ns: u64, severity_number: i32) -> Verdict {
        let p = self.params;
        let (st, _) = self
            .services
            .get_or_insert(key_hash(&[service.as_bytes()]), RateState::default);
        let is_error = severity_number >= ERROR_SEVERITY;
        let v = st.observe(time_ns, is_error, &p);
        if !is_error && v.severity != super::Severity::ColdStart {
            return Verdict::scored(0.0, Explanation::NotScored("severity below ERROR"));
        }
        v
    }

    /// Number of tracked services.
    pub fn services(&self) -> usize {
        self.services.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_log_burst_scores_high() {
        const S: u64 = 1_000_000_000;
        let mut d = LogDetector::new(
            RateParams {
                interval_ns: 10 * S,
                half_life_ns: 600 * S,
                min_samples: 50,
            },
            100,
        );
        let mut t = 1_000 * S;
        for i in 0..30_000u64 {
            t += S / 50;
            d.observe("api", t, if i % 200 == 0 { 17 } else { 9 });
        }
        let mut max = 0.0f32;
        for _ in 0..50 {
            t += S / 50;
            max = max.max(d.observe("api", t, 17).score);
        }
        assert!(max >= 75.0, "{max}");
    }
}
