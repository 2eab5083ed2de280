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

/// Causal: output position t depends on inputs t-RF+1..=t only (RF = the window), so
/// one pass over a long sequence gives the same values as one pass per window.
fn forward(w: &Weights, prefix: &str, x: &Tensor, levels: usize, kernel: usize) -> candle_core::Result<Tensor> {
    let mut h = nn::linear(w, &format!("{prefix}.lift"), x)?;
    for l in 0..levels {
        let c = nn::conv(w, &format!("{prefix}.c{l}"), &h, &offsets(kernel, 1 << l))?.relu()?;
        h = (h + c)?;
    }
    let f = nn::linear(w, &format!("{prefix}.head1"), &h)?.relu()?;
    // (batch, time, 1) → (batch, time)
    nn::linear(w, &format!("{prefix}.head2"), &f)?.squeeze(2)
}

/// Output at the last position of each window.
fn last(y: &Tensor) -> candle_core::Result<Tensor> {
    let t = y.dim(1)?;
    y.narrow(1, t - 1, 1)?.squeeze(1)
}

/// Rows of the receptive field: 1 + (kernel-1)(1 + 2 + … + 2^(levels-1)).
pub fn receptive_field(levels: usize, kernel: usize) -> usize {
    1 + (kernel - 1) * ((1 << levels) - 1)
}

fn add_member(p: &mut Params, prefix: &str, inputs: usize, hidden: usize, levels: usize, kernel: usize) -> candle_core::Result<()> {
    p.linear(&format!("{prefix}.lift"), inputs, hidden)?;
    for l in 0..levels {
        p.linear(&format!("{prefix}.c{l}"), kernel * hidden, hidden)?;
    }
    p.linear(&format!("{prefix}.head1"), hidden, hidden)?;
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
        sum = Some(match sum {
            Some(s) => (s + y)?,
            None => y,
        });
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
        ensemble(&t.w, &probe, t.members, t.levels, t.kernel)
            .map_err(|e| format!("weights do not fit {} net inputs: {e}", t.net_inputs.len()))?;
        Ok(t)
    }

    pub fn predict(&self, m: &Manifest, z: &[Vec<f32>], ends: &[usize]) -> Result<Vec<Prediction>, ModelError> {
        let mut out = Vec::with_capacity(ends.len());
        for chunk in ends.chunks(512) {
            let picks: Vec<(usize, usize)> = chunk.iter().map(|&e| (e + 1 - m.window.min(e + 1), e)).collect();
            let y = values(&last(&ensemble(
                &self.w,
                &windows(z, &picks, m.window, &self.net_inputs)?,
                self.members,
                self.levels,
                self.kernel,
            )?)?)?;
            for v in y {
                let value = (v * self.cap).clamp(0.0, self.cap);
                out.push(Prediction::Rul { value, lower: (value + self.band.0).max(0.0), upper: (value + self.band.1).max(0.0) });
            }
        }
        Ok(out)
    }
}

/// `groups`: row ranges of run-to-failure units; `rul`: remaining life per row.
///
/// Trains on crops of whole units rather than on single windows: the net is causal, so a
/// crop of `window - 1 + L` rows trains `L` windows in one pass (the first `window - 1` rows
/// are history only). Each unit is padded in front with copies of its first row, exactly as
/// inference pads a unit shorter than the window.
pub fn train(
    inputs: Vec<String>,
    rows: &[Vec<f32>],
    rul: &[f32],
    groups: &[std::ops::Range<usize>],
    regimes: Option<Regimes>,
    normalization: crate::manifest::Normalization,
    opts: &TrainOptions,
) -> Result<Trained, TrainError> {
    let (hidden, kernel) = (opts.hidden.unwrap_or(32), 3usize);
    // Default: 4 levels (receptive field 31 rows = the window). A given window gets the most
    // levels whose receptive field fits in it; older rows of the window are then unused.
    let (levels, window) = match opts.window {
        None => (4, receptive_field(4, kernel)),
        Some(w) if w >= receptive_field(1, kernel) => ((1..=6).rev().find(|&l| receptive_field(l, kernel) <= w).unwrap_or(1), w),
        Some(w) => return Err(TrainError::Options(format!("tcn window {w}: at least {} rows", receptive_field(1, kernel)))),
    };
    let members = opts.members.unwrap_or(3).max(1);
    let cap = opts.rul_cap;
    let probe = Manifest {
        inputs: inputs.clone(),
        regimes: regimes.clone(),
        normalization: normalization.clone(),
        ..crate::train::blank_manifest()
    };
    let z = super::normalize_rows(&probe, rows);
    let net_in = net_inputs(inputs.len(), &regimes);
    let c = net_in.len();
    // Units for validation, chosen by a seeded shuffle.
    let mut order: Vec<usize> = (0..groups.len()).collect();
    order.shuffle(&mut StdRng::seed_from_u64(opts.seed));
    let n_val = ((groups.len() as f64) * opts.calibration_fraction).round().max(1.0) as usize;
    if groups.len() < 2 || n_val >= groups.len() {
        return Err(TrainError::TooFewRows { needed: 2, found: groups.len() });
    }
    // Per unit: padded net inputs (flat, (len + window - 1) × c) and capped, scaled targets.
    let unit = |g: &std::ops::Range<usize>| -> (Vec<f32>, Vec<f32>) {
        let mut x = Vec::with_capacity((g.len() + window - 1) * c);
        for k in 0..g.len() + window - 1 {
            let i = (g.start + k).saturating_sub(window - 1).max(g.start);
            x.extend(net_in.iter().map(|&j| z[i][j]));
        }
        (x, g.clone().map(|i| rul[i].min(cap) / cap).collect())
    };
    let fit_units: Vec<(Vec<f32>, Vec<f32>)> = order[n_val..].iter().map(|&g| unit(&groups[g])).collect();
    let val_units: Vec<(Vec<f32>, Vec<f32>)> = order[..n_val].iter().map(|&g| unit(&groups[g])).collect();
    let crop = fit_units.iter().map(|u| u.1.len()).min().unwrap_or(1).clamp(1, 64);
    // An epoch: each training unit contributes len / crop random crops.
    let crops: Vec<usize> = fit_units.iter().enumerate().flat_map(|(u, (_, y))| std::iter::repeat_n(u, y.len().div_ceil(crop))).collect();
    let dev = Device::Cpu;
    let mut all = Weights::new();
    let mut epochs = 0.0;
    for m in 0..members {
        let prefix = format!("m{m}");
        let mut member = Params::new(opts.seed.wrapping_add(1000 + m as u64));
        add_member(&mut member, &prefix, c, hidden, levels, kernel)?;
        let rng = std::cell::RefCell::new(StdRng::seed_from_u64(opts.seed.wrapping_add(77 + m as u64)));
        let loss = |w: &Weights, idx: &[usize]| -> candle_core::Result<Tensor> {
            let mut x = Vec::with_capacity(idx.len() * (crop + window - 1) * c);
            let mut y = Vec::with_capacity(idx.len() * crop);
            for &i in idx {
                let (ux, uy) = &fit_units[crops[i]];
                let start = rand::Rng::gen_range(&mut *rng.borrow_mut(), 0..=uy.len() - crop);
                x.extend_from_slice(&ux[start * c..(start + crop + window - 1) * c]);
                y.extend_from_slice(&uy[start..start + crop]);
            }
            let x = Tensor::from_vec(x, (idx.len(), crop + window - 1, c), &dev)?;
            let y = Tensor::from_vec(y, (idx.len(), crop), &dev)?;
            let out = forward(w, &prefix, &x, levels, kernel)?.narrow(1, window - 1, crop)?;
            (out - y)?.sqr()?.mean_all()
        };
        let validate = |w: &Weights| -> candle_core::Result<f64> {
            let (mut sum, mut n) = (0.0, 0usize);
            for (ux, uy) in &val_units {
                let p = values(&predict_unit(w, &prefix, ux, uy.len(), window, c, levels, kernel)?)?;
                sum += p.iter().zip(uy).map(|(a, b)| ((a - b) as f64).powi(2)).sum::<f64>();
                n += uy.len();
            }
            Ok(sum / n.max(1) as f64)
        };
        let fit_opts = FitOptions {
            epochs: opts.epochs.unwrap_or(30),
            batch: 16,
            lr: 3e-3,
            weight_decay: 1e-4,
            patience: 10,
            max_per_epoch: opts.max_examples_per_epoch,
            seed: opts.seed.wrapping_add(m as u64),
        };
        let (best, report) = nn::fit(&member, crops.len(), &loss, &validate, &fit_opts)?;
        epochs += report.epochs as f64;
        all.extend(best);
    }
    let mut resid = Vec::new();
    for (ux, uy) in &val_units {
        let mut sum: Option<Tensor> = None;
        for m in 0..members {
            let p = predict_unit(&all, &format!("m{m}"), ux, uy.len(), window, c, levels, kernel)?;
            sum = Some(match sum {
                Some(s) => (s + p)?,
                None => p,
            });
        }
        if let Some(s) = sum {
            let p = values(&(s / members as f64)?)?;
            resid.extend(p.iter().zip(uy).map(|(p, y)| ((y - p.clamp(0.0, 1.0)) * cap) as f64));
        }
    }
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
        calibration: BTreeMap::from([
            ("cap".into(), cap as f64),
            ("band_lower".into(), quantile(&resid, 0.1)),
            ("band_upper".into(), quantile(&resid, 0.9)),
        ]),
        metrics: BTreeMap::from([("validation_rmse_capped".into(), val_rmse), ("epochs_mean".into(), epochs / members as f64)]),
        weights: all,
    })
}

/// One member's outputs at every real row of a padded unit: (len,).
#[allow(clippy::too_many_arguments)]
fn predict_unit(
    w: &Weights,
    prefix: &str,
    x: &[f32],
    len: usize,
    window: usize,
    c: usize,
    levels: usize,
    kernel: usize,
) -> candle_core::Result<Tensor> {
    let t = Tensor::from_vec(x.to_vec(), (1, len + window - 1, c), &Device::Cpu)?;
    forward(w, prefix, &t, levels, kernel)?.narrow(1, window - 1, len)?.squeeze(0)
}
