//! The architectures: how each trains, loads its weights and infers.

pub mod conv_ae;
pub mod pca;
pub mod ridge;
pub mod tcn;

use std::collections::BTreeMap;

use crate::manifest::{Manifest, Normalization, Regimes};
use crate::model::{ModelError, Prediction};
use crate::nn::Weights;

/// What an architecture's training produces; `train::train` wraps it into an artifact.
pub struct Trained {
    pub architecture: &'static str,
    pub inputs: Vec<String>,
    pub window: usize,
    pub normalization: Normalization,
    pub regimes: Option<Regimes>,
    pub lags: Vec<usize>,
    pub hyper: BTreeMap<String, f64>,
    pub calibration: BTreeMap<String, f64>,
    pub metrics: BTreeMap<String, f64>,
    pub weights: Weights,
}

/// Weights ready for inference.
pub enum Loaded {
    Pca(pca::Pca),
    Ridge(ridge::Ridge),
    ConvAe(conv_ae::ConvAe),
    Tcn(tcn::Tcn),
}

pub fn load(m: &Manifest, bytes: &[u8]) -> Result<Loaded, String> {
    let w = crate::nn::from_safetensors(bytes).map_err(|e| format!("not a safetensors file: {e}"))?;
    let norm_ok = m.normalization.mean.len() == m.inputs.len() && m.normalization.std.len() == m.inputs.len();
    let regimes_ok = m
        .regimes
        .as_ref()
        .is_some_and(|r| r.stats.iter().all(|s| s.mean.len() == m.inputs.len()) && r.by.iter().all(|&i| i < m.inputs.len()));
    if !norm_ok && !regimes_ok {
        return Err(format!("normalisation has {} values for {} inputs", m.normalization.mean.len(), m.inputs.len()));
    }
    match m.architecture.as_str() {
        "pca" => pca::Pca::load(m, &w).map(Loaded::Pca),
        "ridge" | "ridge-mlp" => ridge::Ridge::load(m, &w).map(Loaded::Ridge),
        "conv-ae" => conv_ae::ConvAe::load(m, w).map(Loaded::ConvAe),
        "tcn" => tcn::Tcn::load(m, w).map(Loaded::Tcn),
        other => Err(format!("unknown architecture {other:?}")),
    }
}

pub fn infer(l: &Loaded, m: &Manifest, rows: &[Vec<f32>]) -> Result<Prediction, ModelError> {
    let ends = [rows.len() - 1];
    let mut out = infer_many(l, m, rows, &ends)?;
    Ok(out.remove(0))
}

pub fn infer_many(l: &Loaded, m: &Manifest, rows: &[Vec<f32>], ends: &[usize]) -> Result<Vec<Prediction>, ModelError> {
    let normalized = normalize_rows(m, rows);
    match l {
        Loaded::Pca(p) => Ok(ends.iter().map(|&e| p.score(m, &normalized[e])).collect()),
        Loaded::Ridge(r) => ends.iter().map(|&e| r.predict(m, &normalized, e)).collect(),
        Loaded::ConvAe(c) => crate::threads::single(|| c.score(m, &normalized, ends)),
        Loaded::Tcn(t) => crate::threads::single(|| t.predict(m, &normalized, ends)),
    }
}

/// Every row normalised (per regime when the model has regimes).
pub fn normalize_rows(m: &Manifest, rows: &[Vec<f32>]) -> Vec<Vec<f32>> {
    rows.iter()
        .map(|r| {
            let mut out = Vec::with_capacity(r.len());
            match &m.regimes {
                Some(reg) => reg.apply(r, &mut out),
                None => m.normalization.apply(r, &mut out),
            }
            out
        })
        .collect()
}

/// (input, share) sorted largest first, shares summing to 1 (equal shares if all zero).
pub fn shares(inputs: &[String], parts: &[f32]) -> Vec<(String, f32)> {
    let total: f32 = parts.iter().map(|p| p.max(0.0)).sum();
    let mut out: Vec<(String, f32)> = inputs
        .iter()
        .zip(parts)
        .map(|(n, p)| (n.clone(), if total > 0.0 { p.max(0.0) / total } else { 1.0 / inputs.len() as f32 }))
        .collect();
    out.sort_by(|a, b| b.1.total_cmp(&a.1));
    out
}

/// A calibration value, or a clear error naming it.
pub fn cal(m: &Manifest, key: &str) -> Result<f64, String> {
    m.calibration.get(key).copied().ok_or_else(|| format!("manifest calibration lacks {key:?}"))
}

pub fn hyper(m: &Manifest, key: &str) -> Result<usize, String> {
    m.hyper.get(key).map(|v| *v as usize).ok_or_else(|| format!("manifest hyper lacks {key:?}"))
}
