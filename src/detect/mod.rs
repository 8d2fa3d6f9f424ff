//! Pure streaming detectors: values and timestamps in, scores out.
//!
//! Nothing here does I/O, reads a clock or touches async code; time is a
//! parameter (nanoseconds since the Unix epoch, taken from the telemetry
//! itself). That keeps every detector testable against a naive batch
//! computation.

pub mod histogram;
pub mod interval;
pub mod keys;
pub mod likelihood;
pub mod log;
pub mod metric;
pub mod rate;
pub mod sketch;
pub mod snapshot;
pub mod span;

use std::fmt::Write as _;

/// Surprise (−log10 of a tail probability) at which scores start above 0.
/// A 1-in-1,000 event is routine in telemetry and scores 0.
const SURPRISE_FLOOR: f64 = 3.0;
/// Surprise range mapped onto 0..100: a 1-in-3-million event scores 100.
const SURPRISE_SPAN: f64 = 3.5;

/// Score (0–100) of an observation whose tail probability is `p`.
///
/// The same mapping is used for every signal, so a score means the same
/// rarity on every key: 25 ≈ 1 in 10^3.9, 50 ≈ 1 in 10^4.75, 75 ≈ 1 in 10^5.6.
pub fn score_from_tail_probability(p: f64) -> f32 {
    if !p.is_finite() || p >= 1.0 {
        return 0.0;
    }
    let surprise = -p.max(1e-300).log10();
    (100.0 * (surprise - SURPRISE_FLOOR) / SURPRISE_SPAN).clamp(0.0, 100.0) as f32
}

/// Severity band of a score (the bands of Elastic ML, so ELK users read them the same way).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Not enough history yet to judge; never an anomaly.
    ColdStart,
    /// Score below 25.
    Normal,
    /// Score 25 to 50.
    Minor,
    /// Score 50 to 75.
    Major,
    /// Score 75 and above.
    Critical,
}

impl Severity {
    /// The band of `score`.
    pub fn of(score: f32) -> Self {
        if score >= 75.0 {
            Severity::Critical
        } else if score >= 50.0 {
            Severity::Major
        } else if score >= 25.0 {
            Severity::Minor
        } else {
            Severity::Normal
        }
    }

    /// The name written into documents.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::ColdStart => "cold_start",
            Severity::Normal => "normal",
            Severity::Minor => "minor",
            Severity::Major => "major",
            Severity::Critical => "critical",
        }
    }
}

/// Why a record got its score; rendered to text only when written out.
#[derive(Debug, Clone, PartialEq)]
pub enum Explanation {
    /// Too little history for this key.
    ColdStart { seen: u64, needed: u64 },
    /// Span duration against the key's latency baseline.
    Latency {
        observed_ms: f64,
        /// Name of the baseline quantile compared against ("p50", "p99", "p99.9").
        quantile: &'static str,
        baseline_ms: f64,
        half_life_s: u64,
    },
    /// Errors in the current interval against the baseline error rate.
    ErrorRate {
        errors: u64,
        total: u64,
        baseline_rate: f64,
    },
    /// A metric value against its robust baseline.
    Metric {
        observed: f64,
        baseline: f64,
        spread: f64,
        /// What was scored ("value", "delta", "mean").
        what: &'static str,
    },
    /// The record is not of a kind this detector scores (for example an info log).
    NotScored(&'static str),
}

/// Appends `v` with `decimals` (0 to 3) digits after the point: the text of
/// `format!("{v:.N}")`. Written for every span and metric point, so the
/// common case skips `core::fmt`'s exact float formatting: below 1e9 the
/// scaled value is within 2e-7 of the exact one, so unless it is that close
/// to a tie (which `fmt` rounds half to even) rounding it gives the same
/// digits; a negative value is its magnitude after a `-` (as `fmt` writes
/// it); ties, zeros with a sign, non-finite and large values go through `fmt`.
fn write_fixed(out: &mut String, v: f64, decimals: u32) {
    const SCALE: [f64; 4] = [1.0, 10.0, 100.0, 1000.0];
    const DIV: [u64; 4] = [1, 10, 100, 1000];
    let d = decimals as usize;
    let negative = v < 0.0;
    let mag = if negative { -v } else { v };
    let scaled = if d == 0 { mag } else { mag * SCALE[d.min(3)] };
    if d <= 3
        && mag.is_sign_positive()
        && scaled < 1e9
        && ((scaled - scaled.floor()) - 0.5).abs() > 1e-6
    {
        if negative {
            out.push('-');
        }
        let n = scaled.round() as u64;
        let (int, frac) = (n / DIV[d], n % DIV[d]);
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        let mut rest = int;
        loop {
            i -= 1;
            digits[i] = b'0' + (rest % 10) as u8;
            rest /= 10;
            if rest == 0 {
                break;
            }
        }
        for &c in &digits[i..] {
            out.push(c as char);
        }
        if d > 0 {
            out.push('.');
            let mut div = DIV[d] / 10;
            while div > 0 {
                out.push((b'0' + (frac / div % 10) as u8) as char);
                div /= 10;
            }
        }
        return;
    }
    let _ = match decimals {
        0 => write!(out, "{v:.0}"),
        1 => write!(out, "{v:.1}"),
        2 => write!(out, "{v:.2}"),
        _ => write!(out, "{v:.3}"),
    };
}

fn fmt_ms(out: &mut String, ms: f64) {
    if ms >= 10_000.0 {
        write_fixed(out, ms / 1000.0, 1);
        out.push_str(" s");
    } else if ms >= 100.0 {
        write_fixed(out, ms, 0);
        out.push_str(" ms");
    } else if ms >= 1.0 {
        write_fixed(out, ms, 1);
        out.push_str(" ms");
    } else {
        write_fixed(out, ms * 1000.0, 0);
        out.push_str(" µs");
    }
}

fn fmt_num(out: &mut String, v: f64) {
    let a = v.abs();
    if a != 0.0 && !(1e-3..1e9).contains(&a) {
        let _ = write!(out, "{v:.3e}");
    } else if a >= 100.0 || v.fract() == 0.0 {
        write_fixed(out, v, 0);
    } else {
        write_fixed(out, v, 3);
    }
}

impl Explanation {
    /// Appends a one-line human explanation; `subject` names the key (span name, metric name, service).
    pub fn render(&self, subject: &str, out: &mut String) {
        match self {
            Explanation::ColdStart { seen, needed } => {
                let _ = write!(
                    out,
                    "cold start: {seen} of {needed} samples of history for {subject}"
                );
            }
            Explanation::Latency {
                observed_ms,
                quantile,
                baseline_ms,
                half_life_s,
            } => {
                out.push_str("duration ");
                fmt_ms(out, *observed_ms);
                let factor = if *baseline_ms > 0.0 {
                    observed_ms / baseline_ms
                } else {
                    0.0
                };
                if factor >= 1.0 {
                    out.push_str(" is ");
                    write_fixed(out, factor, 1);
                    out.push_str("× the ");
                } else {
                    out.push_str(" is within the usual range (below the ");
                }
                out.push_str(quantile);
                out.push_str(" of ");
                fmt_ms(out, *baseline_ms);
                out.push_str(" seen for ");
                out.push_str(subject);
                out.push_str(" over the last ");
                write_duration(out, *half_life_s);
                if factor < 1.0 {
                    out.push(')');
                }
            }
            Explanation::ErrorRate {
                errors,
                total,
                baseline_rate,
            } => {
                let rate = if *total > 0 {
                    *errors as f64 / *total as f64
                } else {
                    0.0
                };
                let _ = write!(
                    out,
                    "{errors} errors in {total} {subject} records this interval ({:.1}%) vs baseline {:.2}%",
                    rate * 100.0,
                    baseline_rate * 100.0
                );
                if *baseline_rate > 0.0 {
                    let _ = write!(out, ", {:.1}×", rate / baseline_rate);
                }
            }
            Explanation::Metric {
                observed,
                baseline,
                spread,
                what,
            } => {
                out.push_str(subject);
                out.push(' ');
                out.push_str(what);
                out.push(' ');
                fmt_num(out, *observed);
                out.push_str(" vs baseline ");
                fmt_num(out, *baseline);
                out.push_str(" ± ");
                fmt_num(out, *spread);
                if *spread > 0.0 {
                    let sigmas = (observed - baseline) / spread;
                    out.push_str(" (");
                    if sigmas.is_finite() && sigmas.is_sign_positive() {
                        out.push('+');
                        write_fixed(out, sigmas, 1);
                    } else if sigmas.is_finite() {
                        write_fixed(out, sigmas, 1);
                    } else {
                        let _ = write!(out, "{sigmas:+.1}");
                    }
                    out.push_str("σ)");
                }
            }
            Explanation::NotScored(why) => {
                let _ = write!(out, "not scored: {why}");
            }
        }
    }
}

/// Appends `s` seconds as "2 h", "5 min" or "90 s" (no allocation: this is
/// written into every span's explanation).
fn write_duration(out: &mut String, s: u64) {
    let _ = if s.is_multiple_of(3600) && s >= 3600 {
        write!(out, "{} h", s / 3600)
    } else if s.is_multiple_of(60) && s >= 60 {
        write!(out, "{} min", s / 60)
    } else {
        write!(out, "{s} s")
    };
}

/// A detector's judgement of one record.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// 0–100; 0 for cold-start and unscored records.
    pub score: f32,
    /// Band of `score`, or cold start.
    pub severity: Severity,
    /// What the score is based on.
    pub explanation: Explanation,
}

impl Verdict {
    /// A cold-start verdict.
    pub fn cold_start(seen: u64, needed: u64) -> Self {
        Verdict {
            score: 0.0,
            severity: Severity::ColdStart,
            explanation: Explanation::ColdStart { seen, needed },
        }
    }

    /// A scored verdict (severity derived from the score).
    pub fn scored(score: f32, explanation: Explanation) -> Self {
        Verdict {
            score,
            severity: Severity::of(score),
            explanation,
        }
    }
}

/// Score at or above which a record counts as anomalous and is kept out of
/// the baseline (mostly: see `ANOMALOUS_WEIGHT`).
pub const ANOMALOUS_SCORE: f32 = 50.0;

/// Weight with which an anomalous record still enters the baseline, so that a
/// lasting change (a deploy that made a call slower for good) becomes the new
/// normal over tens of minutes instead of never, while a short outage barely
/// moves it.
pub const ANOMALOUS_WEIGHT: f32 = 0.05;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn write_fixed_matches_fmt(
            v in prop_oneof![
                0.0f64..1e4,
                0.0f64..2e9,
                any::<f64>(),
                // Ties and near-ties (k/20 and k/2 are exact halves or close to them).
                (0u64..200_000).prop_map(|k| k as f64 / 20.0),
                (0u64..200_000).prop_map(|k| k as f64 / 2.0),
                (0u64..200_000).prop_map(|k| k as f64 * 0.05),
                // Ties and near-ties at three decimals, and negatives.
                (0u64..2_000_000).prop_map(|k| k as f64 / 2000.0),
                (0u64..2_000_000).prop_map(|k| k as f64 * 0.0005),
                -1e4f64..0.0,
                (0u64..200_000).prop_map(|k| -(k as f64) / 20.0),
                (0u64..2_000_000).prop_map(|k| -(k as f64) / 2000.0),
            ],
            decimals in 0u32..4,
        ) {
            let mut ours = String::new();
            write_fixed(&mut ours, v, decimals);
            prop_assert_eq!(ours, fixed_by_fmt(v, decimals));
        }

        /// The metric explanation's numbers and σ, as `core::fmt` wrote them.
        #[test]
        fn metric_explanation_matches_fmt(
            observed in prop_oneof![any::<f64>(), -1e4f64..1e4, (0i64..2_000_000).prop_map(|k| k as f64 / 2000.0 - 500.0)],
            baseline in prop_oneof![any::<f64>(), -1e4f64..1e4, Just(0.0)],
            spread in prop_oneof![any::<f64>(), 0.0f64..1e3, Just(0.0), Just(-0.0)],
        ) {
            let mut ours = String::new();
            Explanation::Metric { observed, baseline, spread, what: "value" }.render("m", &mut ours);
            let num = |v: f64| {
                let a = v.abs();
                if a != 0.0 && !(1e-3..1e9).contains(&a) {
                    format!("{v:.3e}")
                } else if a >= 100.0 || v.fract() == 0.0 {
                    format!("{v:.0}")
                } else {
                    format!("{v:.3}")
                }
            };
            let mut expected = format!("m value {} vs baseline {} ± {}", num(observed), num(baseline), num(spread));
            if spread > 0.0 {
                expected.push_str(&format!(" ({:+.1}σ)", (observed - baseline) / spread));
            }
            prop_assert_eq!(ours, expected);
        }
    }

    fn fixed_by_fmt(v: f64, decimals: u32) -> String {
        match decimals {
            0 => format!("{v:.0}"),
            1 => format!("{v:.1}"),
            2 => format!("{v:.2}"),
            _ => format!("{v:.3}"),
        }
    }

    #[test]
    fn write_fixed_edges() {
        for v in [
            0.0,
            -0.0,
            0.05,
            0.25,
            0.35,
            0.95,
            2.5,
            9.95,
            99.95,
            1e9,
            1e20,
            f64::NAN,
            f64::INFINITY,
            -3.25,
            -0.0004,
            0.0005,
            0.0015,
            1.0005,
            -99.9995,
            f64::NEG_INFINITY,
        ] {
            for decimals in 0..4 {
                let mut ours = String::new();
                write_fixed(&mut ours, v, decimals);
                let expected = fixed_by_fmt(v, decimals);
                assert_eq!(ours, expected, "{v} with {decimals} decimals");
            }
        }
    }

    #[test]
    fn score_mapping_is_monotone_and_bounded() {
        assert_eq!(score_from_tail_probability(0.5), 0.0);
        assert_eq!(score_from_tail_probability(1e-3), 0.0);
        let s4 = score_from_tail_probability(1e-4);
        let s5 = score_from_tail_probability(1e-5);
        assert!(s4 > 20.0 && s4 < 35.0, "{s4}");
        assert!(s5 > s4);
        assert_eq!(score_from_tail_probability(1e-12), 100.0);
        assert_eq!(score_from_tail_probability(0.0), 100.0);
        assert_eq!(score_from_tail_probability(f64::NAN), 0.0);
    }

    #[test]
    fn severity_bands() {
        assert_eq!(Severity::of(0.0), Severity::Normal);
        assert_eq!(Severity::of(25.0), Severity::Minor);
        assert_eq!(Severity::of(50.0), Severity::Major);
        assert_eq!(Severity::of(99.0), Severity::Critical);
    }

    #[test]
    fn explanations_read_well() {
        let mut s = String::new();
        Explanation::Latency {
            observed_ms: 870.0,
            quantile: "p99.9",
            baseline_ms: 120.0,
            half_life_s: 600,
        }
        .render("GET /cart", &mut s);
        assert_eq!(
            s,
            "duration 870 ms is 7.2× the p99.9 of 120 ms seen for GET /cart over the last 10 min"
        );
        for (half_life_s, tail) in [(7200, "2 h"), (90, "90 s"), (3660, "61 min"), (0, "0 s")] {
            s.clear();
            Explanation::Latency {
                observed_ms: 0.5,
                quantile: "p50",
                baseline_ms: 20_000.0,
                half_life_s,
            }
            .render("GET /", &mut s);
            assert_eq!(
                s,
                format!(
                    "duration 500 µs is within the usual range (below the p50 of 20.0 s \
                     seen for GET / over the last {tail})"
                )
            );
        }
        s.clear();
        Explanation::ErrorRate {
            errors: 5,
            total: 20,
            baseline_rate: 0.004,
        }
        .render("GET /cart", &mut s);
        assert_eq!(
            s,
            "5 errors in 20 GET /cart records this interval (25.0%) vs baseline 0.40%, 62.5×"
        );
    }
}
