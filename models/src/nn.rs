//! Candle building blocks shared by the nets: seeded parameters, linear layers, shifted
//! (dilated, causal or centred) 1-D convolutions, and one training loop with early stopping.
//!
//! Convolutions are written as "shift the sequence, concatenate, multiply": on the CPU that
//! is one matrix product per layer forward and backward, which is faster than Candle's
//! direct dilated convolution kernels for these tiny channel counts.

use std::collections::HashMap;

use candle_core::{DType, Device, Result, Tensor, Var, D};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

/// Named weights of a net (parameters while training, loaded tensors at inference).
pub type Weights = HashMap<String, Tensor>;

/// Trainable parameters, initialised from a seeded generator so a training run repeats.
pub struct Params {
    vars: Vec<(String, Var)>,
    rng: StdRng,
}

impl Params {
    pub fn new(seed: u64) -> Params {
        Params { vars: Vec::new(), rng: StdRng::seed_from_u64(seed) }
    }

    /// A linear layer `prefix.w` (in×out, LeCun-uniform) and `prefix.b` (zeros).
    pub fn linear(&mut self, prefix: &str, inputs: usize, outputs: usize) -> Result<()> {
        let bound = (3.0 / inputs as f32).sqrt();
        let w: Vec<f32> = (0..inputs * outputs).map(|_| self.rng.gen_range(-bound..bound)).collect();
        self.add(&format!("{prefix}.w"), Tensor::from_vec(w, (inputs, outputs), &Device::Cpu)?)?;
        self.add(&format!("{prefix}.b"), Tensor::zeros(outputs, DType::F32, &Device::Cpu)?)
    }

    fn add(&mut self, name: &str, t: Tensor) -> Result<()> {
        self.vars.push((name.to_string(), Var::from_tensor(&t)?));
        Ok(())
    }

    /// The current parameters as tensors (tracked for gradients).
    pub fn weights(&self) -> Weights {
        self.vars.iter().map(|(n, v)| (n.clone(), v.as_tensor().clone())).collect()
    }

    /// A detached copy of the current values (for keeping the best epoch).
    pub fn snapshot(&self) -> Result<Weights> {
        self.vars.iter().map(|(n, v)| Ok((n.clone(), v.as_tensor().detach().copy()?))).collect()
    }

    fn all_vars(&self) -> Vec<Var> {
        self.vars.iter().map(|(_, v)| v.clone()).collect()
    }
}

pub fn get<'a>(w: &'a Weights, name: &str) -> Result<&'a Tensor> {
    w.get(name).ok_or_else(|| candle_core::Error::Msg(format!("weights lack tensor {name}")))
}

/// `x` (…, in) → (…, out).
pub fn linear(w: &Weights, prefix: &str, x: &Tensor) -> Result<Tensor> {
    let weight = get(w, &format!("{prefix}.w"))?;
    let bias = get(w, &format!("{prefix}.b"))?;
    let dims = x.dims().to_vec();
    let inputs = dims[dims.len() - 1];
    let rows = x.elem_count() / inputs.max(1);
    let y = x.reshape((rows, inputs))?.matmul(weight)?.broadcast_add(bias)?;
    let mut out_dims = dims;
    let last = out_dims.len() - 1;
    out_dims[last] = weight.dim(1)?;
    y.reshape(out_dims)
}

/// `x` (batch, time, channels) shifted along time by `shift` steps: positive looks back
/// (row t gets row t-shift), negative looks ahead; zeros fill in.
fn shift(x: &Tensor, shift: isize) -> Result<Tensor> {
    let (b, t, c) = x.dims3()?;
    let s = shift.unsigned_abs();
    if s == 0 {
        return Ok(x.clone());
    }
    if s >= t {
        return x.zeros_like();
    }
    let zeros = Tensor::zeros((b, s, c), x.dtype(), x.device())?;
    if shift > 0 {
        Tensor::cat(&[&zeros, &x.narrow(1, 0, t - s)?], 1)
    } else {
        Tensor::cat(&[&x.narrow(1, s, t - s)?, &zeros], 1)
    }
}

/// A 1-D convolution over time with the given tap offsets (e.g. `[0, 2, 4]` for a causal
/// kernel of 3 with dilation 2; `[-2, -1, 0, 1, 2]` for a centred kernel of 5).
/// The layer `prefix` must have `offsets.len() × channels` inputs.
pub fn conv(w: &Weights, prefix: &str, x: &Tensor, offsets: &[isize]) -> Result<Tensor> {
    let shifted = offsets.iter().map(|&o| shift(x, o)).collect::<Result<Vec<_>>>()?;
    let stacked = Tensor::cat(&shifted, D::Minus1)?;
    linear(w, prefix, &stacked)
}

/// How to train.
#[derive(Debug, Clone)]
pub struct FitOptions {
    pub epochs: usize,
    pub batch: usize,
    pub lr: f64,
    pub weight_decay: f64,
    /// Stop after this many epochs without a better validation loss.
    pub patience: usize,
    /// At most this many training examples per epoch (a random subset), to bound time.
    pub max_per_epoch: usize,
    pub seed: u64,
}

#[derive(Debug, Clone)]
pub struct FitReport {
    pub first_train_loss: f64,
    pub last_train_loss: f64,
    pub best_validation_loss: f64,
    pub epochs: usize,
}

/// Minimises `loss(weights, batch indices)` over `n_train` examples with AdamW, keeping the
/// weights of the epoch with the lowest `validate(weights)`.
pub fn fit(
    params: &Params,
    n_train: usize,
    loss: &dyn Fn(&Weights, &[usize]) -> Result<Tensor>,
    validate: &dyn Fn(&Weights) -> Result<f64>,
    opts: &FitOptions,
) -> Result<(Weights, FitReport)> {
    let mut opt = AdamW::new(params.all_vars(), ParamsAdamW { lr: opts.lr, weight_decay: opts.weight_decay, ..Default::default() })?;
    let mut rng = StdRng::seed_from_u64(opts.seed ^ 0x5eed);
    let mut order: Vec<usize> = (0..n_train).collect();
    let mut best = (f64::INFINITY, params.snapshot()?);
    let mut report = FitReport { first_train_loss: f64::NAN, last_train_loss: f64::NAN, best_validation_loss: f64::INFINITY, epochs: 0 };
    let mut since_best = 0;
    for epoch in 0..opts.epochs {
        // Cosine decay of the learning rate over the planned epochs.
        let lr = opts.lr * 0.5 * (1.0 + (std::f64::consts::PI * epoch as f64 / opts.epochs as f64).cos()).max(0.05);
        opt.set_learning_rate(lr);
        order.shuffle(&mut rng);
        let take = order.len().min(opts.max_per_epoch.max(1));
        let (mut sum, mut batches) = (0.0, 0);
        for chunk in order[..take].chunks(opts.batch.max(1)) {
            let l = loss(&params.weights(), chunk)?;
            opt.backward_step(&l)?;
            sum += l.to_scalar::<f32>()? as f64;
            batches += 1;
        }
        let train_loss = sum / batches.max(1) as f64;
        if epoch == 0 {
            report.first_train_loss = train_loss;
        }
        report.last_train_loss = train_loss;
        report.epochs = epoch + 1;
        let v = validate(&params.weights())?;
        if v < best.0 {
            best = (v, params.snapshot()?);
            since_best = 0;
        } else {
            since_best += 1;
            if since_best >= opts.patience {
                break;
            }
        }
    }
    report.best_validation_loss = best.0;
    Ok((best.1, report))
}

/// Serialises weights to safetensors bytes (deterministic order).
pub fn to_safetensors(w: &Weights) -> std::result::Result<Vec<u8>, String> {
    let sorted: std::collections::BTreeMap<&String, &Tensor> = w.iter().collect();
    safetensors::tensor::serialize(sorted.into_iter().map(|(k, v)| (k.clone(), v.clone())), None).map_err(|e| e.to_string())
}

/// Reads safetensors bytes into weights on the CPU.
pub fn from_safetensors(bytes: &[u8]) -> Result<Weights> {
    candle_core::safetensors::load_buffer(bytes, &Device::Cpu)
}

/// Flat `f32` values of a tensor.
pub fn values(t: &Tensor) -> Result<Vec<f32>> {
    t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()
}
