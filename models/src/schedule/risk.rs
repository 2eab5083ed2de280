//! The chance of failure before a time, from a RUL estimate and its band.

/// A remaining-useful-life estimate in hours from now: the point value and a 10 %–90 % band.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RulEstimate {
    pub value: f64,
    /// 10 % quantile: one asset in ten fails before this.
    pub lower: f64,
    /// 90 % quantile.
    pub upper: f64,
}

/// z of the 90 % quantile of a standard normal.
const Z90: f64 = 1.281_551_565_5;

impl RulEstimate {
    /// Probability that the asset fails within `t` hours from now.
    ///
    /// A split normal: the point value is the median, the spread below it comes from the
    /// lower band, above it from the upper one (RUL bands are rarely symmetric). A band of
    /// zero width is a step at the value.
    pub fn failure_probability_by(&self, t: f64) -> f64 {
        if !t.is_finite() {
            return if t > 0.0 { 1.0 } else { 0.0 };
        }
        let median = self.value.max(0.0);
        let below = ((median - self.lower.min(median)) / Z90).max(0.0);
        let above = ((self.upper.max(median) - median) / Z90).max(0.0);
        let sigma = if t < median { below } else { above };
        if sigma <= f64::EPSILON {
            return if t < median { 0.0 } else { 1.0 };
        }
        normal_cdf((t - median) / sigma)
    }
}

/// Standard normal CDF (Abramowitz–Stegun 7.1.26 erf, error < 1.5e-7).
fn normal_cdf(z: f64) -> f64 {
    let x = z / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.327_591_1 * x.abs());
    let poly = t * (0.254_829_592 + t * (-0.284_496_736 + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    let erf = 1.0 - poly * (-x * x).exp();
    let erf = if x >= 0.0 { erf } else { -erf };
    0.5 * (1.0 + erf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_band_edges_are_the_ten_and_ninety_percent_points_and_the_value_the_median() {
        let r = RulEstimate { value: 100.0, lower: 80.0, upper: 140.0 };
        assert!((r.failure_probability_by(80.0) - 0.10).abs() < 1e-4);
        assert!((r.failure_probability_by(100.0) - 0.50).abs() < 1e-6);
        assert!((r.failure_probability_by(140.0) - 0.90).abs() < 1e-4);
    }

    #[test]
    fn the_risk_grows_with_time_and_stays_a_probability() {
        let r = RulEstimate { value: 50.0, lower: 30.0, upper: 90.0 };
        let mut last = 0.0;
        for t in (0..300).map(|h| h as f64) {
            let p = r.failure_probability_by(t);
            assert!((0.0..=1.0).contains(&p) && p >= last, "{t}: {p}");
            last = p;
        }
        assert!(r.failure_probability_by(0.0) < 0.01);
        assert!(r.failure_probability_by(f64::INFINITY) == 1.0);
    }

    #[test]
    fn a_band_of_zero_width_is_a_step_at_the_value() {
        let r = RulEstimate { value: 10.0, lower: 10.0, upper: 10.0 };
        assert_eq!(r.failure_probability_by(9.99), 0.0);
        assert_eq!(r.failure_probability_by(10.0), 1.0);
    }
}
