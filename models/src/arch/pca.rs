//! PCA with Hotelling's T² and the Q (squared prediction error) statistic: the classic
//! multivariate process-monitoring detector, per row. Fallback and baseline for `conv-ae`.

use std::collections::BTreeMap;

use candle_core::{Device, Tensor};

use super::{cal, shares, Trained};
use crate::linalg::{quantile, symmetric_eigen};
use crate::manifest::Manifest;
use crate::model::Prediction;
use crate::nn::{get, values, Weights};
use crate::train::{TrainError, TrainOptions};

pub struct Pca {
    /// k components × d inputs.
    components: Vec<Vec<f32>>,
    eigenvalues: Vec<f32>,
    t2_threshold: f32,
    q_threshold: f32,
}

/// Fraction of the variance the kept components explain.
const EXPLAINED: f64 = 0.9;

impl Pca {
    pub fn load(m: &Manifest, w: &Weights) -> Result<Pca, String> {
        let d = m.inputs.len();
        let comps = values(get(w, "components").map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
        let eig = values(get(w, "eigenvalues").map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
        if eig.is_empty() || comps.len() != eig.len() * d {
            return Err(format!("components hold {} values, expected {} × {d} inputs", comps.len(), eig.len()));
        }
        if m.window != 1 {
            return Err(format!("pca scores single rows; window is {}", m.window));
        }
        Ok(Pca {
            components: comps.chunks(d).map(|c| c.to_vec()).collect(),
            eigenvalues: eig,
            t2_threshold: cal(m, "t2_threshold")? as f32,
            q_threshold: cal(m, "q_threshold")? as f32,
        })
    }

    /// (T², Q, per-input contributions to each) of a normalised row.
    fn stats(&self, z: &[f32]) -> (f32, f32, Vec<f32>, Vec<f32>) {
        let t: Vec<f32> = self.components.iter().map(|p| p.iter().zip(z).map(|(a, b)| a * b).sum()).collect();
        let t2: f32 = t.iter().zip(&self.eigenvalues).map(|(ti, l)| ti * ti / l).sum();
        let mut recon = vec![0.0f32; z.len()];
        let mut t2_dir = vec![0.0f32; z.len()];
        for ((p, ti), l) in self.components.iter().zip(&t).zip(&self.eigenvalues) {
            for (i, pi) in p.iter().enumerate() {
                recon[i] += pi * ti;
                t2_dir[i] += pi * ti / l;
            }
        }
        let q_parts: Vec<f32> = z.iter().zip(&recon).map(|(a, b)| (a - b).powi(2)).collect();
        let q = q_parts.iter().sum();
        let t2_parts = z.iter().zip(&t2_dir).map(|(a, b)| (a * b).abs()).collect();
        (t2, q, t2_parts, q_parts)
    }

    pub fn score(&self, m: &Manifest, z: &[f32]) -> Prediction {
        let (t2, q, t2_parts, q_parts) = self.stats(z);
        let (a, b) = (t2 / self.t2_threshold, q / self.q_threshold);
        let score = a.max(b);
        let parts: Vec<f32> = t2_parts.iter().zip(&q_parts).map(|(x, y)| x / self.t2_threshold + y / self.q_threshold).collect();
        Prediction::Anomaly { score, contributions: shares(&m.inputs, &parts) }
    }
}

/// Fits on the first rows and calibrates both limits on the last `calibration_fraction` of
/// the (normal) training rows at the `1 - false_alarm_rate` quantile.
pub fn train(inputs: Vec<String>, rows: &[Vec<f32>], opts: &TrainOptions) -> Result<Trained, TrainError> {
    let d = inputs.len();
    let split = ((rows.len() as f64) * (1.0 - opts.calibration_fraction)).round() as usize;
    let split = split.clamp(2.min(rows.len()), rows.len());
    let fit_rows: Vec<&[f32]> = rows[..split].iter().map(|r| r.as_slice()).collect();
    if fit_rows.len() < 2 {
        return Err(TrainError::TooFewRows { needed: 3, found: rows.len() });
    }
    let normalization = crate::norm::fit(&fit_rows, d);
    let z: Vec<Vec<f32>> = rows
        .iter()
        .map(|r| {
            let mut o = Vec::new();
            normalization.apply(r, &mut o);
            o
        })
        .collect();
    let mut cov = vec![0.0f64; d * d];
    for r in &z[..split] {
        for i in 0..d {
            for j in 0..d {
                cov[i * d + j] += r[i] as f64 * r[j] as f64;
            }
        }
    }
    cov.iter_mut().for_each(|c| *c /= (split - 1).max(1) as f64);
    let (vals, vecs) = symmetric_eigen(&cov, d);
    let total: f64 = vals.iter().map(|v| v.max(0.0)).sum::<f64>().max(1e-12);
    let mut k = 0;
    let mut acc = 0.0;
    while k < d && acc / total < EXPLAINED {
        acc += vals[k].max(0.0);
        k += 1;
    }
    let k = k.clamp(1, d.saturating_sub(1).max(1));
    let eigenvalues: Vec<f32> = vals[..k].iter().map(|v| v.max(1e-6) as f32).collect();
    let components: Vec<Vec<f32>> = vecs[..k].iter().map(|v| v.iter().map(|x| *x as f32).collect()).collect();
    let mut pca = Pca { components: components.clone(), eigenvalues: eigenvalues.clone(), t2_threshold: 1.0, q_threshold: 1.0 };
    let cal_rows = if split < z.len() { &z[split..] } else { &z[..] };
    let (t2s, qs): (Vec<f64>, Vec<f64>) = cal_rows
        .iter()
        .map(|r| {
            let (t2, q, _, _) = pca.stats(r);
            (t2 as f64, q as f64)
        })
        .unzip();
    let level = 1.0 - opts.false_alarm_rate;
    let t2_threshold = (quantile(&t2s, level) * opts.threshold_margin).max(1e-6);
    let q_threshold = (quantile(&qs, level) * opts.threshold_margin).max(1e-6);
    pca.t2_threshold = t2_threshold as f32;
    pca.q_threshold = q_threshold as f32;
    let flagged = cal_rows
        .iter()
        .filter(|r| {
            let (t2, q, _, _) = pca.stats(r);
            t2 > pca.t2_threshold || q > pca.q_threshold
        })
        .count();
    let mut w = Weights::new();
    let dev = Device::Cpu;
    let flat: Vec<f32> = components.iter().flatten().copied().collect();
    w.insert("components".into(), Tensor::from_vec(flat, (k, d), &dev)?);
    w.insert("eigenvalues".into(), Tensor::from_vec(eigenvalues, k, &dev)?);
    Ok(Trained {
        architecture: "pca",
        inputs,
        window: 1,
        normalization,
        regimes: None,
        lags: vec![],
        hyper: BTreeMap::from([("components".into(), k as f64)]),
        calibration: BTreeMap::from([("t2_threshold".into(), t2_threshold), ("q_threshold".into(), q_threshold)]),
        metrics: BTreeMap::from([
            ("explained_variance".into(), acc / total),
            ("calibration_alarm_rate".into(), flagged as f64 / cal_rows.len().max(1) as f64),
        ]),
        weights: w,
    })
}
