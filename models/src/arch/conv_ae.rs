//! Convolutional autoencoder over a window of an asset's tags, trained on normal operation:
//! two centred convolutions with time pooling down to a bottleneck, two back up. The score is
//! the mean squared reconstruction error of the window; each tag's share of it says which
//! tags are abnormal.

use std::collections::BTreeMap;

use candle_core::{Device, Tensor};

use super::{cal, hyper, shares, Trained};
use crate::linalg::quantile;
use crate::manifest::Manifest;
use crate::model::{ModelError, Prediction};
use crate::nn::{self, values, FitOptions, Params, Weights};
use crate::train::{TrainError, TrainOptions};

pub struct ConvAe {
    w: Weights,
    offsets: Vec<isize>,
    threshold: f32,
}

fn centred(kernel: usize) -> Vec<isize> {
    let half = (kernel / 2) as isize;
    (-half..=half).collect()
}

/// Time pooling by 2 (mean of pairs) and its inverse (repeat).
fn pool(x: &Tensor) -> candle_core::Result<Tensor> {
    let (b, t, c) = x.dims3()?;
    x.reshape((b, t / 2, 2, c))?.mean(2)
}

fn upsample(x: &Tensor) -> candle_core::Result<Tensor> {
    let (b, t, c) = x.dims3()?;
    x.reshape((b, t, 1, c))?.broadcast_as((b, t, 2, c))?.contiguous()?.reshape((b, t * 2, c))
}

fn forward(w: &Weights, x: &Tensor, offsets: &[isize]) -> candle_core::Result<Tensor> {
    let h = nn::conv(w, "enc1", x, offsets)?.relu()?;
    let h = nn::conv(w, "enc2", &pool(&h)?, offsets)?.relu()?;
    let h = pool(&h)?;
    let h = nn::conv(w, "dec1", &upsample(&h)?, offsets)?.relu()?;
    nn::conv(w, "dec2", &upsample(&h)?, offsets)
}

/// Per-window, per-input mean squared reconstruction error: (batch, inputs).
fn errors(w: &Weights, x: &Tensor, offsets: &[isize]) -> candle_core::Result<Tensor> {
    (forward(w, x, offsets)? - x)?.sqr()?.mean(1)
}

/// Stacks the windows ending at `ends` into (batch, window, inputs).
fn windows(z: &[Vec<f32>], ends: &[usize], window: usize) -> candle_core::Result<Tensor> {
    let d = z.first().map_or(0, |r| r.len());
    let mut flat = Vec::with_capacity(ends.len() * window * d);
    for &e in ends {
        for r in &z[e + 1 - window..=e] {
            flat.extend_from_slice(r);
        }
    }
    Tensor::from_vec(flat, (ends.len(), window, d), &Device::Cpu)
}

impl ConvAe {
    pub fn load(m: &Manifest, w: Weights) -> Result<ConvAe, String> {
        if m.window % 4 != 0 {
            return Err(format!("conv-ae window {} must be a multiple of 4", m.window));
        }
        let offsets = centred(hyper(m, "kernel")?);
        let probe = Tensor::zeros((1, m.window, m.inputs.len()), candle_core::DType::F32, &Device::Cpu).map_err(|e| e.to_string())?;
        let out = forward(&w, &probe, &offsets).map_err(|e| format!("weights do not fit {} inputs: {e}", m.inputs.len()))?;
        if out.dims() != probe.dims() {
            return Err(format!("decoder gives {:?}, expected {:?}", out.dims(), probe.dims()));
        }
        Ok(ConvAe { w, offsets, threshold: cal(m, "threshold")? as f32 })
    }

    pub fn score(&self, m: &Manifest, z: &[Vec<f32>], ends: &[usize]) -> Result<Vec<Prediction>, ModelError> {
        let mut out = Vec::with_capacity(ends.len());
        for chunk in ends.chunks(1024) {
            let e = values(&errors(&self.w, &windows(z, chunk, m.window)?, &self.offsets)?)?;
            for per_input in e.chunks(m.inputs.len()) {
                let raw = per_input.iter().sum::<f32>() / per_input.len() as f32;
                out.push(Prediction::Anomaly { score: raw / self.threshold, contributions: shares(&m.inputs, per_input) });
            }
        }
        Ok(out)
    }
}

/// Trains on the first rows (normal operation) and sets the threshold at the
/// `1 - false_alarm_rate` quantile of the held-back last rows' scores.
pub fn train(inputs: Vec<String>, rows: &[Vec<f32>], opts: &TrainOptions) -> Result<Trained, TrainError> {
    let d = inputs.len();
    let window = opts.window.unwrap_or(32);
    if window < 4 || window % 4 != 0 {
        return Err(TrainError::Options(format!("conv-ae window {window} must be a multiple of 4 (at least 4)")));
    }
    let kernel = 5;
    let (h1, h2) = (16, 8);
    let split = ((rows.len() as f64) * (1.0 - opts.calibration_fraction)).round() as usize;
    if split < window + 8 || rows.len() < split + window {
        return Err(TrainError::TooFewRows { needed: (window + 8) * 2, found: rows.len() });
    }
    let fit_rows: Vec<&[f32]> = rows[..split].iter().map(|r| r.as_slice()).collect();
    let normalization = crate::norm::fit(&fit_rows, d);
    let z: Vec<Vec<f32>> = rows
        .iter()
        .map(|r| {
            let mut o = Vec::new();
            normalization.apply(r, &mut o);
            o
        })
        .collect();
    let offsets = centred(kernel);
    let k = offsets.len();
    let mut params = Params::new(opts.seed);
    params.linear("enc1", k * d, h1)?;
    params.linear("enc2", k * h1, h2)?;
    params.linear("dec1", k * h2, h1)?;
    params.linear("dec2", k * h1, d)?;
    let fit_ends: Vec<usize> = (window - 1..split).collect();
    let cal_ends: Vec<usize> = (split + window - 1..rows.len()).collect();
    let all = windows(&z, &fit_ends, window)?;
    let cal_x = windows(&z, &cal_ends, window)?;
    let dev = Device::Cpu;
    let loss = |w: &Weights, idx: &[usize]| -> candle_core::Result<Tensor> {
        let ids = Tensor::from_vec(idx.iter().map(|&i| i as u32).collect::<Vec<u32>>(), idx.len(), &dev)?;
        let x = all.index_select(&ids, 0)?;
        errors(w, &x, &offsets)?.mean_all()
    };
    let validate = |w: &Weights| -> candle_core::Result<f64> { Ok(errors(w, &cal_x, &offsets)?.mean_all()?.to_scalar::<f32>()? as f64) };
    let fit_opts = FitOptions {
        epochs: opts.epochs.unwrap_or(60),
        batch: 32,
        lr: 3e-3,
        weight_decay: 1e-4,
        patience: 15,
        max_per_epoch: opts.max_examples_per_epoch,
        seed: opts.seed,
    };
    let (best, report) = nn::fit(&params, fit_ends.len(), &loss, &validate, &fit_opts)?;
    let cal_raw: Vec<f64> = values(&errors(&best, &cal_x, &offsets)?.mean(1)?)?.into_iter().map(|v| v as f64).collect();
    let threshold = (quantile(&cal_raw, 1.0 - opts.false_alarm_rate) * opts.threshold_margin).max(1e-9);
    Ok(Trained {
        architecture: "conv-ae",
        inputs,
        window,
        normalization,
        regimes: None,
        lags: vec![],
        hyper: BTreeMap::from([("kernel".into(), kernel as f64), ("channels1".into(), h1 as f64), ("channels2".into(), h2 as f64)]),
        calibration: BTreeMap::from([("threshold".into(), threshold)]),
        metrics: BTreeMap::from([
            ("train_loss_first_epoch".into(), report.first_train_loss),
            ("train_loss_last_epoch".into(), report.last_train_loss),
            ("calibration_loss".into(), report.best_validation_loss),
            ("epochs".into(), report.epochs as f64),
        ]),
        weights: best,
    })
}
