//! Remaining useful life from a window of condition signals: an ensemble of small dilated
//! causal convolution nets (TCN). Inputs are normalised per operating regime, the target
//! is capped (early life counts as "healthy, cap cycles left"), and the band comes from the
//! residuals on held-back units.

use std::collections::BTreeMap;

use candle_core::{Device, Tensor};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

use super::{cal, hyper, Trained};
use crate::linalg::quantile;
use crate::manifest::{Manifest, Regimes};
use crate::model::{ModelError, Prediction};
use crate::nn::{self, values, FitOptions, Params, Weights};
use crate::train::{TrainError, TrainOptions};

pub struct Tcn {
    w: Weights,
    members: usize,
    levels: usize,
    kernel: usize,
    /// Inputs fed to the net (all but the regime-defining ones).
    net_inputs: Vec<usize>,
    cap: f32,
    band: (f32, f32),
}

fn offsets(kernel: usize, dilation: usize) -> Vec<isize> {
    (0..kernel).map(|j| (j * dilation) as isize).collect()
}

fn forward(w: &Weights, prefix: &str, x: &Tensor, levels: usize, kernel: usize) -> candle_core::Result<Tensor> {
    let mut h = nn::linear(w, &format!("{prefix}.lift"), x)?;
    for l in 0..levels {
        let c = nn::conv(w, &format!("{prefix}.c{l}"), &h, &offsets(kernel, 1 << l))?.relu()?;
        h = (h + c)?;
    }
    let t = h.dim(1)?;
    let last = h.narrow(1, t - 1, 1)?.squeeze(1)?;
    let mean = h.mean(1)?;
    let f = Tensor::cat(&[&last, &mean], 1)?;
    let f = nn::linear(w, &format!("{prefix}.head1"), &f)?.relu()?;
    nn::linear(w, &format!("{prefix}.head2"), &f)?.squeeze(1)
}

fn add_member(p: &mut Params, prefix: &str, inputs: usize, hidden: usize, levels: usize, kernel: usize) -> candle_core::Result<()> {
    p.linear(&format!("{prefix}.lift"), inputs, hidden)?;
    for l in 0..levels {
        p.linear(&format!("{prefix}.c{l}"), kernel * hidden, hidden)?;
    }
    p.linear(&format!("{prefix}.head1"), 2 * hidden, hidden)?;
    p.linear(&format!("{prefix}.head2"), hidden, 1)
}

/// (batch, window, net inputs) from normalised rows: the window ending at each `end` of
/// `rows[start..]`, padded at the front with the first row when the history is shorter.
fn windows(z: &[Vec<f32>], picks: &[(usize, usize)], window: usize, net_inputs: &[usize]) -> candle_core::Result<Tensor> {
    let mut flat = Vec::with_capacity(picks.len() * window * net_inputs.len());
    for &(start, end) in picks {
        for k in 0..window {
            let back = window - 1 - k;
            let i = if end >= start + back { end - back } else { start };
            flat.extend(net_inputs.iter().map(|&c| z[i][c]));
        }
    }
    Tensor::from_vec(flat, (picks.len(), window, net_inputs.len()), &Device::Cpu)
}

fn net_inputs(inputs: usize, regimes: &Option<Regimes>) -> Vec<usize> {
    (0..inputs).filter(|i| regimes.as_ref().is_none_or(|r| !r.by.contains(i))).collect()
}

fn ensemble(w: &Weights, x: &Tensor, members: usize, levels: usize, kernel: usize) -> candle_core::Result<Tensor> {
    let mut sum: Option<Tensor> = None;
    for m in 0..members {
        let y = forward(w, &format!("m{m}"), x, levels, kernel)?;
        sum = Some(match sum { Some(s) => (s + y)?, None => y });
    }
    match sum {
        Some(s) => s / members as f64,
        None => Err(candle_core::Error::Msg("ensemble has no members".into())),
    }
}

impl Tcn {
    pub fn load(m: &Manifest, w: Weights) -> Result<Tcn, String> {
        let t = Tcn {
            members: hyper(m, "members")?,
            levels: hyper(m, "levels")?,
            kernel: hyper(m, "kernel")?,
            net_inputs: net_inputs(m.inputs.len(), &m.regimes),
            cap: cal(m, "cap")? as f32,
            band: (cal(m, "band_lower")? as f32, cal(m, "band_upper")? as f32),
            w,
        };
        let probe = Tensor::zeros((1, m.window, t.net_inputs.len()), candle_core::DType::F32, &Device::Cpu).map_err(|e| e.to_string())?;
        ensemble(&t.w, &probe, t.members, t.levels, t.kernel).map_err(|e| format!("weights do not fit {} net inputs: {e}", t.net_inputs.len()))?;
        Ok(t)
    }

    pub fn predict(&self, m: &Manifest, z: &[Vec<f32>], ends: &[usize]) -> Result<Vec<Prediction>, ModelError> {
        let mut out = Vec::with_capacity(ends.len());
        for chunk in ends.chunks(512) {
            let picks: Vec<(usize, usize)> = chunk.iter().map(|&e| (e + 1 - m.window.min(e + 1), e)).collect();
            let y = values(&ensemble(&self.w, &windows(z, &picks, m.window, &self.net_inputs)?, self.members, self.levels, self.kernel)?)?;
            for v in y {
                let value = (v * self.cap).clamp(0.0, self.cap);
                out.push(Prediction::Rul { value, lower: (value + self.band.0).max(0.0), upper: (value + self.band.1).max(0.0) });
            }
        }
        Ok(out)
    }
}

/// `groups`: row ranges of run-to-failure units; `rul`: remaining life per row.
pub fn train(inputs: Vec<String>, rows: &[Vec<f32>], rul: &[f32], groups: &[std::ops::Range<usize>], regimes: Option<Regimes>, normalization: crate::manifest::Normalization, opts: &TrainOptions) -> Result<Trained, TrainError> {
    let window = opts.window.unwrap_or(30);
    let (hidden, levels, kernel) = (opts.hidden.unwrap_or(32), 4usize, 3usize);
    let members = opts.members.unwrap_or(3).max(1);
    let cap = opts.rul_cap;
    let probe = Manifest { inputs: inputs.clone(), regimes: regimes.clone(), normalization: normalization.clone(), ..crate::train::blank_manifest() };
    let z = super::normalize_rows(&probe, rows);
    let net_in = net_inputs(inputs.len(), &regimes);
    // Units for validation, chosen by a seeded shuffle.
    let mut order: Vec<usize> = (0..groups.len()).collect();
    order.shuffle(&mut StdRng::seed_from_u64(opts.seed));
    let n_val = ((groups.len() as f64) * opts.calibration_fraction).round().max(1.0) as usize;
    if groups.len() < 2 || n_val >= groups.len() {
        return Err(TrainError::TooFewRows { needed: 2, found: groups.len() });
    }
    let picks_of = |gs: &[usize]| -> Vec<(usize, usize)> { gs.iter().flat_map(|&g| groups[g].clone().map(move |e| (groups[g].start, e))).collect() };
    let val_picks = picks_of(&order[..n_val]);
    let fit_picks = picks_of(&order[n_val..]);
    let target = |picks: &[(usize, usize)]| -> Vec<f32> { picks.iter().map(|&(_, e)| rul[e].min(cap) / cap).collect() };
    let fit_y = target(&fit_picks);
    let val_y = target(&val_picks);
    let dev = Device::Cpu;
    let val_x = windows(&z, &val_picks, window, &net_in)?;
    // Each member trains on its own; the ensemble keeps every member's best epoch.
    let mut all = Weights::new();
    let mut epochs = 0.0;
    for m in 0..members {
        let prefix = format!("m{m}");
        let mut member = Params::new(opts.seed.wrapping_add(1000 + m as u64));
        add_member(&mut member, &prefix, net_in.len(), hidden, levels, kernel)?;
        let loss = |w: &Weights, idx: &[usize]| -> candle_core::Result<Tensor> {
            let picks: Vec<(usize, usize)> = idx.iter().map(|&i| fit_picks[i]).collect();
            let x = windows(&z, &picks, window, &net_in)?;
            let y = Tensor::from_vec(idx.iter().map(|&i| fit_y[i]).collect::<Vec<f32>>(), idx.len(), &dev)?;
            (forward(w, &prefix, &x, levels, kernel)? - y)?.sqr()?.mean_all()
        };
        let validate = |w: &Weights| -> candle_core::Result<f64> {
            let p = values(&forward(w, &prefix, &val_x, levels, kernel)?)?;
            Ok(p.iter().zip(&val_y).map(|(a, b)| ((a - b) as f64).powi(2)).sum::<f64>() / val_y.len().max(1) as f64)
        };
        let fit_opts = FitOptions {
            epochs: opts.epochs.unwrap_or(30),
            batch: 128,
            lr: 2e-3,
            weight_decay: 1e-4,
            patience: 8,
            max_per_epoch: opts.max_examples_per_epoch,
            seed: opts.seed.wrapping_add(m as u64),
        };
        let (best, report) = nn::fit(&member, fit_picks.len(), &loss, &validate, &fit_opts)?;
        epochs += report.epochs as f64;
        all.extend(best);
    }
    let pred = values(&ensemble(&all, &val_x, members, levels, kernel)?)?;
    let resid: Vec<f64> = pred.iter().zip(&val_y).map(|(p, y)| ((y - p.clamp(0.0, 1.0)) * cap) as f64).collect();
    let val_rmse = (resid.iter().map(|r| r * r).sum::<f64>() / resid.len().max(1) as f64).sqrt();
    Ok(Trained {
        architecture: "tcn",
        inputs,
        window,
        normalization,
        regimes,
        lags: vec![],
        hyper: BTreeMap::from([
            ("members".into(), members as f64),
            ("levels".into(), levels as f64),
            ("kernel".into(), kernel as f64),
            ("hidden".into(), hidden as f64),
        ]),
        calibration: BTreeMap::from([("cap".into(), cap as f64), ("band_lower".into(), quantile(&resid, 0.1)), ("band_upper".into(), quantile(&resid, 0.9))]),
        metrics: BTreeMap::from([("validation_rmse_capped".into(), val_rmse), ("epochs_mean".into(), epochs / members as f64)]),
        weights: all,
    })
}
