//! Soft sensor on lagged inputs: ridge regression (`ridge`), optionally plus a small MLP
//! trained on the ridge's residuals with early stopping (`ridge-mlp`), so the net only has to
//! learn what the linear model misses and can never do much worse than it on the
//! validation span.

use std::collections::BTreeMap;

use candle_core::{Device, Tensor};

use super::{cal, Trained};
use crate::linalg::{cholesky_solve, quantile};
use crate::manifest::Manifest;
use crate::model::{ModelError, Prediction};
use crate::nn::{self, get, values, FitOptions, Params, Weights};
use crate::train::{TrainError, TrainOptions};

pub struct Ridge {
    coef: Vec<f32>,
    intercept: f32,
    mlp: Option<(Weights, usize)>,
    residual_scale: f32,
    band: (f32, f32),
}

/// Lagged feature vector of the window ending at `end`: for each input, each lag.
// `i` is a column, read from several rows (one per lag): an iterator over one row would not do.
#[allow(clippy::needless_range_loop)]
fn features(z: &[Vec<f32>], end: usize, lags: &[usize], out: &mut Vec<f32>) {
    let d = z[end].len();
    for i in 0..d {
        for &l in lags {
            out.push(z[end - l][i]);
        }
    }
}

fn mlp_forward(w: &Weights, prefix: &str, x: &Tensor) -> candle_core::Result<Tensor> {
    let h = nn::linear(w, &format!("{prefix}.l1"), x)?.tanh()?;
    nn::linear(w, &format!("{prefix}.out"), &h)
}

/// Mean correction of the ensemble's members (`mlp0`, `mlp1`, …): (batch, 1).
fn mlp_ensemble(w: &Weights, members: usize, x: &Tensor) -> candle_core::Result<Tensor> {
    let mut sum = mlp_forward(w, "mlp0", x)?;
    for j in 1..members {
        sum = (sum + mlp_forward(w, &format!("mlp{j}"), x)?)?;
    }
    sum / members as f64
}

/// Members in a ridge-mlp ensemble (averaging seeds steadies a net trained on ~1000 rows).
const MLP_MEMBERS: usize = 3;
const MLP_HIDDEN: usize = 16;

impl Ridge {
    pub fn load(m: &Manifest, w: &Weights) -> Result<Ridge, String> {
        let lags = if m.lags.is_empty() { vec![0] } else { m.lags.clone() };
        if lags.iter().max().copied().unwrap_or(0) + 1 != m.window {
            return Err(format!("largest lag {} does not fit window {}", lags.iter().max().copied().unwrap_or(0), m.window));
        }
        let coef = values(get(w, "ridge.coef").map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
        if coef.len() != m.inputs.len() * lags.len() {
            return Err(format!("ridge has {} coefficients, expected {} inputs × {} lags", coef.len(), m.inputs.len(), lags.len()));
        }
        let intercept = values(get(w, "ridge.intercept").map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
        let mlp = if m.architecture == "ridge-mlp" {
            let members = super::hyper(m, "mlp_members")?.max(1);
            let keep: Weights = w.iter().filter(|(k, _)| k.starts_with("mlp")).map(|(k, v)| (k.clone(), v.clone())).collect();
            let probe = Tensor::zeros((1, coef.len()), candle_core::DType::F32, &Device::Cpu).map_err(|e| e.to_string())?;
            mlp_ensemble(&keep, members, &probe).map_err(|e| format!("mlp weights do not fit: {e}"))?;
            Some((keep, members))
        } else {
            None
        };
        Ok(Ridge {
            coef,
            intercept: intercept.first().copied().unwrap_or(0.0),
            mlp,
            residual_scale: m.calibration.get("residual_scale").copied().unwrap_or(1.0) as f32,
            band: (cal(m, "band_lower")? as f32, cal(m, "band_upper")? as f32),
        })
    }

    pub fn predict(&self, m: &Manifest, z: &[Vec<f32>], end: usize) -> Result<Prediction, ModelError> {
        let lags = if m.lags.is_empty() { vec![0] } else { m.lags.clone() };
        let mut f = Vec::with_capacity(self.coef.len());
        features(z, end, &lags, &mut f);
        let mut value = self.intercept + f.iter().zip(&self.coef).map(|(a, b)| a * b).sum::<f32>();
        if let Some((w, members)) = &self.mlp {
            let r = crate::threads::single(|| -> candle_core::Result<f32> {
                let x = Tensor::from_vec(f.clone(), (1, f.len()), &Device::Cpu)?;
                Ok(values(&mlp_ensemble(w, *members, &x)?)?[0])
            })?;
            value += r * self.residual_scale;
        }
        Ok(Prediction::Quality { value, lower: value + self.band.0, upper: value + self.band.1 })
    }
}

/// Ridge on `x` (n × p, already standardised) and `y`: coefficients and intercept.
fn ridge_fit(x: &[Vec<f32>], y: &[f32], lambda: f64) -> Option<(Vec<f32>, f32)> {
    let p = x.first()?.len();
    let n = x.len() as f64;
    let ym = y.iter().map(|v| *v as f64).sum::<f64>() / n;
    let xm: Vec<f64> = (0..p).map(|j| x.iter().map(|r| r[j] as f64).sum::<f64>() / n).collect();
    let mut a = vec![0.0f64; p * p];
    let mut b = vec![0.0f64; p];
    for (r, yv) in x.iter().zip(y) {
        for i in 0..p {
            let xi = r[i] as f64 - xm[i];
            b[i] += xi * (*yv as f64 - ym);
            for j in i..p {
                a[i * p + j] += xi * (r[j] as f64 - xm[j]);
            }
        }
    }
    for i in 0..p {
        for j in 0..i {
            a[i * p + j] = a[j * p + i];
        }
        a[i * p + i] += lambda * n;
    }
    let coef = cholesky_solve(&a, &b, p)?;
    let intercept = ym - coef.iter().zip(&xm).map(|(c, m)| c * m).sum::<f64>();
    Some((coef.into_iter().map(|c| c as f32).collect(), intercept as f32))
}

fn ridge_apply(x: &[f32], coef: &[f32], intercept: f32) -> f32 {
    intercept + x.iter().zip(coef).map(|(a, b)| a * b).sum::<f32>()
}

fn rmse(pred: &[f32], y: &[f32]) -> f64 {
    (pred.iter().zip(y).map(|(p, t)| ((p - t) as f64).powi(2)).sum::<f64>() / y.len().max(1) as f64).sqrt()
}

/// Lag sets tried when none are given: every `step` rows back to `span`, at most 13 lags.
fn lag_grid() -> Vec<Vec<usize>> {
    let mut out = vec![vec![0]];
    for span in [6usize, 12, 24, 36, 48] {
        for step in [1usize, 2, 3, 4, 6] {
            if span / step <= 12 {
                out.push((0..=span).step_by(step).collect());
            }
        }
    }
    out
}

/// Trains with `opts.lags`, or, if none are given, with the lag set whose ridge does best on
/// the chronological validation span (the test data is never looked at).
pub fn train(inputs: Vec<String>, rows: &[Vec<f32>], target: &[f32], mlp: bool, opts: &TrainOptions) -> Result<Trained, TrainError> {
    let lags = match &opts.lags {
        Some(l) => l.clone(),
        None => {
            let mut best: Option<(f64, Vec<usize>)> = None;
            for lags in lag_grid() {
                let t = match train_with_lags(inputs.clone(), rows, target, false, opts, lags.clone()) {
                    Ok(t) => t,
                    Err(TrainError::TooFewRows { .. }) => continue,
                    Err(e) => return Err(e),
                };
                let v = t.metrics.get("validation_rmse").copied().unwrap_or(f64::INFINITY);
                if best.as_ref().is_none_or(|b| v < b.0) {
                    best = Some((v, lags));
                }
            }
            best.map(|b| b.1).unwrap_or_else(|| vec![0])
        }
    };
    train_with_lags(inputs, rows, target, mlp, opts, lags)
}

fn train_with_lags(
    inputs: Vec<String>,
    rows: &[Vec<f32>],
    target: &[f32],
    mlp: bool,
    opts: &TrainOptions,
    lags: Vec<usize>,
) -> Result<Trained, TrainError> {
    let max_lag = lags.iter().max().copied().unwrap_or(0);
    let d = inputs.len();
    let n_rows = rows.len();
    let split_row = ((n_rows as f64) * (1.0 - opts.calibration_fraction)).round() as usize;
    if n_rows < max_lag + 10 || split_row <= max_lag + 2 || split_row >= n_rows {
        return Err(TrainError::TooFewRows { needed: max_lag + 10, found: n_rows });
    }
    let fit_rows: Vec<&[f32]> = rows[..split_row].iter().map(|r| r.as_slice()).collect();
    let normalization = crate::norm::fit(&fit_rows, d);
    let z: Vec<Vec<f32>> = rows
        .iter()
        .map(|r| {
            let mut o = Vec::new();
            normalization.apply(r, &mut o);
            o
        })
        .collect();
    let ends: Vec<usize> = (max_lag..n_rows).filter(|&e| target[e].is_finite()).collect();
    let feats: Vec<Vec<f32>> = ends
        .iter()
        .map(|&e| {
            let mut f = Vec::new();
            features(&z, e, &lags, &mut f);
            f
        })
        .collect();
    let ys: Vec<f32> = ends.iter().map(|&e| target[e]).collect();
    let n_fit = ends.iter().filter(|&&e| e < split_row).count();
    let (xf, xv) = feats.split_at(n_fit);
    let (yf, yv) = ys.split_at(n_fit);
    // Choose the penalty on the chronological validation span.
    let mut best: Option<(f64, f64, Vec<f32>, f32)> = None;
    for lambda in [1e-4, 1e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0, 10.0] {
        if let Some((c, b)) = ridge_fit(xf, yf, lambda) {
            let pred: Vec<f32> = xv.iter().map(|x| ridge_apply(x, &c, b)).collect();
            let e = rmse(&pred, yv);
            if best.as_ref().is_none_or(|b| e < b.0) {
                best = Some((e, lambda, c, b));
            }
        }
    }
    let (ridge_val_rmse, lambda, coef_fit, icpt_fit) = best.ok_or(TrainError::Singular)?;
    let ridge_val_pred: Vec<f32> = xv.iter().map(|x| ridge_apply(x, &coef_fit, icpt_fit)).collect();
    let mut w = Weights::new();
    let dev = Device::Cpu;
    let mut calibration = BTreeMap::from([("ridge_lambda".to_string(), lambda)]);
    let mut metrics = BTreeMap::from([("validation_rmse_ridge".to_string(), ridge_val_rmse)]);
    // The linear part is refitted on all training rows with the chosen penalty (the most
    // recent rows matter most in a drifting plant); bands come from the held-back span.
    let (coef, icpt) = ridge_fit(&feats, &ys, lambda).ok_or(TrainError::Singular)?;
    let mut hyper = BTreeMap::new();
    let val_pred = if mlp {
        // The nets learn the residual of the ridge fitted without the validation span, stop
        // early on that span, and their correction is shrunk by the factor that does best
        // there (0: the nets add nothing, 1: taken as is).
        let fit_resid: Vec<f32> = xf.iter().zip(yf).map(|(x, y)| y - ridge_apply(x, &coef_fit, icpt_fit)).collect();
        let scale = (fit_resid.iter().map(|r| (*r as f64).powi(2)).sum::<f64>() / fit_resid.len().max(1) as f64).sqrt().max(1e-6) as f32;
        let p = xf[0].len();
        let x_all = Tensor::from_vec(xf.iter().flatten().copied().collect::<Vec<f32>>(), (xf.len(), p), &dev)?;
        let r_all = Tensor::from_vec(fit_resid.iter().map(|r| r / scale).collect::<Vec<f32>>(), (xf.len(), 1), &dev)?;
        let x_val = Tensor::from_vec(xv.iter().flatten().copied().collect::<Vec<f32>>(), (xv.len(), p), &dev)?;
        let val_target: Vec<f32> = yv.iter().zip(&ridge_val_pred).map(|(y, r)| (y - r) / scale).collect();
        let mut epochs = 0.0;
        for j in 0..MLP_MEMBERS {
            let prefix = format!("mlp{j}");
            let mut params = Params::new(opts.seed.wrapping_add(j as u64));
            params.linear(&format!("{prefix}.l1"), p, MLP_HIDDEN)?;
            params.linear(&format!("{prefix}.out"), MLP_HIDDEN, 1)?;
            let loss = |w: &Weights, idx: &[usize]| -> candle_core::Result<Tensor> {
                let ids = Tensor::from_vec(idx.iter().map(|&i| i as u32).collect::<Vec<u32>>(), idx.len(), &dev)?;
                let x = x_all.index_select(&ids, 0)?;
                let t = r_all.index_select(&ids, 0)?;
                (mlp_forward(w, &prefix, &x)? - t)?.sqr()?.mean_all()
            };
            let validate = |w: &Weights| -> candle_core::Result<f64> {
                let out = values(&mlp_forward(w, &prefix, &x_val)?)?;
                Ok(out.iter().zip(&val_target).map(|(o, t)| ((o - t) as f64).powi(2)).sum::<f64>() / val_target.len().max(1) as f64)
            };
            let fit_opts = FitOptions {
                epochs: opts.epochs.unwrap_or(200),
                batch: 64,
                lr: 2e-3,
                weight_decay: 1e-2,
                patience: 20,
                max_per_epoch: usize::MAX,
                seed: opts.seed.wrapping_add(j as u64),
            };
            let (best_w, report) = nn::fit(&params, xf.len(), &loss, &validate, &fit_opts)?;
            epochs += report.epochs as f64;
            w.extend(best_w);
        }
        metrics.insert("mlp_epochs_mean".into(), epochs / MLP_MEMBERS as f64);
        let corr = values(&mlp_ensemble(&w, MLP_MEMBERS, &x_val)?)?;
        // Least-squares shrink factor on the validation span, kept within [0, 1].
        let num: f64 = corr.iter().zip(&val_target).map(|(c, t)| (*c as f64) * (*t as f64)).sum();
        let den: f64 = corr.iter().map(|c| (*c as f64).powi(2)).sum::<f64>().max(1e-12);
        let alpha = (num / den).clamp(0.0, 1.0);
        metrics.insert("mlp_shrink".into(), alpha);
        calibration.insert("residual_scale".into(), scale as f64 * alpha);
        hyper.insert("mlp_members".into(), MLP_MEMBERS as f64);
        hyper.insert("mlp_hidden".into(), MLP_HIDDEN as f64);
        ridge_val_pred.iter().zip(&corr).map(|(r, c)| r + c * scale * alpha as f32).collect()
    } else {
        ridge_val_pred
    };
    let resid: Vec<f64> = yv.iter().zip(&val_pred).map(|(y, p)| (y - p) as f64).collect();
    calibration.insert("band_lower".into(), quantile(&resid, 0.1));
    calibration.insert("band_upper".into(), quantile(&resid, 0.9));
    metrics.insert("validation_rmse".into(), rmse(&val_pred, yv));
    w.insert("ridge.coef".into(), Tensor::from_vec(coef, d * lags.len(), &dev)?);
    w.insert("ridge.intercept".into(), Tensor::from_vec(vec![icpt], 1, &dev)?);
    Ok(Trained {
        architecture: if mlp { "ridge-mlp" } else { "ridge" },
        inputs,
        window: max_lag + 1,
        normalization,
        regimes: None,
        lags,
        hyper,
        calibration,
        metrics,
        weights: w,
    })
}
