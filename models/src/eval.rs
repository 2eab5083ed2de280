//! Metrics for each task, as the public benchmarks define them.

/// Point-wise confusion counts of an anomaly detector.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Confusion {
    pub tp: u64,
    pub fp: u64,
    pub tn: u64,
    pub fn_: u64,
}

impl Confusion {
    pub fn add(&mut self, predicted: bool, actual: bool) {
        match (predicted, actual) {
            (true, true) => self.tp += 1,
            (true, false) => self.fp += 1,
            (false, false) => self.tn += 1,
            (false, true) => self.fn_ += 1,
        }
    }

    pub fn merge(&mut self, o: &Confusion) {
        self.tp += o.tp;
        self.fp += o.fp;
        self.tn += o.tn;
        self.fn_ += o.fn_;
    }

    pub fn f1(&self) -> f64 {
        let d = 2 * self.tp + self.fp + self.fn_;
        if d == 0 {
            0.0
        } else {
            2.0 * self.tp as f64 / d as f64
        }
    }

    /// False-alarm rate: share of normal points flagged (FP / (FP + TN)).
    pub fn far(&self) -> f64 {
        ratio(self.fp, self.fp + self.tn)
    }

    /// Missed-alarm rate: share of anomalous points not flagged (FN / (FN + TP)).
    pub fn mar(&self) -> f64 {
        ratio(self.fn_, self.fn_ + self.tp)
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

pub fn rmse(pred: &[f32], truth: &[f32]) -> f64 {
    (pred.iter().zip(truth).map(|(p, t)| ((p - t) as f64).powi(2)).sum::<f64>() / truth.len().max(1) as f64).sqrt()
}

/// Coefficient of determination.
pub fn r2(pred: &[f32], truth: &[f32]) -> f64 {
    let n = truth.len().max(1) as f64;
    let mean = truth.iter().map(|t| *t as f64).sum::<f64>() / n;
    let ss_tot: f64 = truth.iter().map(|t| (*t as f64 - mean).powi(2)).sum();
    let ss_res: f64 = pred.iter().zip(truth).map(|(p, t)| ((p - t) as f64).powi(2)).sum();
    if ss_tot == 0.0 {
        0.0
    } else {
        1.0 - ss_res / ss_tot
    }
}

/// The asymmetric C-MAPSS (PHM08) score: late predictions cost more than early ones.
pub fn nasa_score(pred: &[f32], truth: &[f32]) -> f64 {
    pred.iter()
        .zip(truth)
        .map(|(p, t)| {
            let d = (p - t) as f64;
            if d < 0.0 {
                (-d / 13.0).exp() - 1.0
            } else {
                (d / 10.0).exp() - 1.0
            }
        })
        .sum()
}

/// Share of truths inside [lower, upper].
pub fn coverage(lower: &[f32], upper: &[f32], truth: &[f32]) -> f64 {
    let inside = lower.iter().zip(upper).zip(truth).filter(|((l, u), t)| **l <= **t && **t <= **u).count();
    inside as f64 / truth.len().max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_match_hand_computed_values() {
        let mut c = Confusion::default();
        for (p, a) in [(true, true), (true, false), (false, false), (false, true), (true, true)] {
            c.add(p, a);
        }
        assert!((c.f1() - 4.0 / 6.0).abs() < 1e-12);
        assert!((c.far() - 0.5).abs() < 1e-12);
        assert!((c.mar() - 1.0 / 3.0).abs() < 1e-12);
        assert!((rmse(&[1.0, 3.0], &[2.0, 2.0]) - 1.0).abs() < 1e-12);
        assert!((r2(&[1.0, 2.0, 3.0], &[1.0, 2.0, 3.0]) - 1.0).abs() < 1e-12);
        // Late by 10 costs e - 1, early by 13 costs e - 1.
        let e1 = std::f64::consts::E - 1.0;
        assert!((nasa_score(&[20.0, 0.0], &[10.0, 13.0]) - 2.0 * e1).abs() < 1e-9);
    }
}

/// Result of scoring one labelled run with an anomaly model.
#[derive(Debug, Clone, Default)]
pub struct RunResult {
    /// Point-wise, raw threshold (score ≥ 1).
    pub raw: Confusion,
    /// Point-wise, after the alarm's smoothing, hysteresis and minimum durations.
    pub alarm: Confusion,
}

/// Scores every row of a labelled run (`data.target`: 1 anomalous, 0 normal) with `model`
/// and compares the flags with the labels. Rows before the first full window count as
/// "not flagged". With `skip` > 0, the first `skip` rows (used for training) are scored too
/// but left out of the counts if `count_skipped` is false.
pub fn score_run(
    model: &crate::Model,
    data: &crate::dataset::Dataset,
    alarm: crate::alarm::AlarmOptions,
    skip: usize,
    count_skipped: bool,
) -> Result<RunResult, crate::ModelError> {
    let w = model.manifest().window;
    let labels = data.target.clone().unwrap_or_else(|| vec![0.0; data.len()]);
    let ends: Vec<usize> = (w.saturating_sub(1)..data.len()).collect();
    let preds = model.infer_many(&data.rows, &ends)?;
    let mut scores = vec![f32::NAN; data.len()];
    for (e, p) in ends.iter().zip(&preds) {
        if let crate::Prediction::Anomaly { score, .. } = p {
            scores[*e] = *score;
        }
    }
    let mut out = RunResult::default();
    let mut state = crate::alarm::Alarm::new(alarm);
    for (i, s) in scores.iter().enumerate() {
        state.update(*s);
        if i < skip && !count_skipped {
            continue;
        }
        let actual = labels[i] >= 0.5;
        out.raw.add(s.is_finite() && *s >= 1.0, actual);
        out.alarm.add(state.active(), actual);
    }
    Ok(out)
}
