//! Training: a [`Dataset`] and options in, an [`Artifact`] out.

use std::collections::BTreeMap;

use crate::arch::{self, Trained};
use crate::artifact::{sha256_hex, Artifact};
use crate::dataset::Dataset;
use crate::manifest::{Manifest, ModelKind, Normalization, Regimes, MANIFEST_FORMAT};

/// Options; `Default` gives sensible values for a plant's history.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// Artifact name, e.g. "mill-bearing-rul".
    pub name: String,
    /// Free-text version stored in the manifest.
    pub version: String,
    /// None: `conv-ae` (anomaly), `ridge-mlp` (quality), `tcn` (rul).
    pub architecture: Option<String>,
    /// Rows per window (anomaly conv-ae: 32; rul: 30).
    pub window: Option<usize>,
    /// Quality: lags of each input (rows back); default `[0]`.
    pub lags: Option<Vec<usize>>,
    /// Unit of the prediction for the manifest ("%", "cycles", "h").
    pub unit: Option<String>,
    pub seed: u64,
    pub epochs: Option<usize>,
    /// Rul: nets in the ensemble (default 3).
    pub members: Option<usize>,
    /// Rul: channels of the TCN (default 32).
    pub hidden: Option<usize>,
    /// Anomaly: target false-alarm rate per window on held-back normal data.
    pub false_alarm_rate: f64,
    /// Anomaly: the threshold is the calibration quantile times this.
    pub threshold_margin: f64,
    /// Share of the training data held back (the last rows, or units for rul) for
    /// early stopping, calibration and the band.
    pub calibration_fraction: f64,
    /// Rul: the target is min(rul, cap).
    pub rul_cap: f32,
    /// Rul: columns that define the operating regime (normalised per regime); empty: none.
    pub regime_columns: Vec<String>,
    /// Rul: number of regimes to find.
    pub regimes: usize,
    /// Nets: at most this many training windows per epoch (a random subset).
    pub max_examples_per_epoch: usize,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            name: "model".into(),
            version: "1".into(),
            architecture: None,
            window: None,
            lags: None,
            unit: None,
            seed: 42,
            epochs: None,
            members: None,
            hidden: None,
            false_alarm_rate: 0.01,
            threshold_margin: 1.0,
            calibration_fraction: 0.2,
            rul_cap: 125.0,
            regime_columns: vec![],
            regimes: 6,
            max_examples_per_epoch: 8192,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("too few rows (or units) to train: need at least {needed}, have {found}")]
    TooFewRows { needed: usize, found: usize },
    #[error("{kind} training needs a target column (--label / --target)")]
    NoTarget { kind: ModelKind },
    #[error("no column named {0:?}")]
    Column(String),
    #[error("architecture {architecture:?} does not do {kind} (use {expected})")]
    Architecture { architecture: String, kind: ModelKind, expected: &'static str },
    #[error("{0}")]
    Options(String),
    #[error("the regression is singular even with the largest penalty (constant inputs?)")]
    Singular,
    #[error("a value in row {row}, column {column:?} is not a finite number")]
    NonFinite { row: usize, column: String },
    #[error("training computation failed: {0}")]
    Candle(candle_core::Error),
    #[error("cannot serialise the weights: {0}")]
    Serialise(String),
}

// Not `#[from]`: that would make the Candle error the source too, and error chains would
// print its text twice.
impl From<candle_core::Error> for TrainError {
    fn from(e: candle_core::Error) -> Self {
        TrainError::Candle(e)
    }
}

/// A manifest with empty fields (filled in by the caller).
pub(crate) fn blank_manifest() -> Manifest {
    Manifest {
        format: MANIFEST_FORMAT,
        kind: ModelKind::Anomaly,
        name: String::new(),
        version: String::new(),
        architecture: String::new(),
        inputs: vec![],
        window: 1,
        target: None,
        unit: None,
        training_data_sha256: String::new(),
        weights_sha256: String::new(),
        metrics: BTreeMap::new(),
        normalization: Normalization::default(),
        regimes: None,
        lags: vec![],
        hyper: BTreeMap::new(),
        calibration: BTreeMap::new(),
    }
}

/// Trains a model of `kind` on `data`. Anomaly models learn from every row (give them normal
/// operation); quality models need `data.target`; rul models use `data.target` if present,
/// else the rows left in each group (run-to-failure units).
pub fn train(kind: ModelKind, data: &Dataset, opts: &TrainOptions) -> Result<Artifact, TrainError> {
    for (r, row) in data.rows.iter().enumerate() {
        if let Some(c) = row.iter().position(|v| !v.is_finite()) {
            return Err(TrainError::NonFinite { row: r, column: data.columns[c].clone() });
        }
    }
    let arch_name = opts.architecture.clone().unwrap_or_else(|| match kind {
        ModelKind::Anomaly => "conv-ae".into(),
        ModelKind::Quality => "ridge-mlp".into(),
        ModelKind::Rul => "tcn".into(),
    });
    let wrong = |expected| TrainError::Architecture { architecture: arch_name.clone(), kind, expected };
    let inputs = data.columns.clone();
    let trained: Trained = match kind {
        ModelKind::Anomaly => match arch_name.as_str() {
            "conv-ae" => arch::conv_ae::train(inputs, &data.rows, opts)?,
            "pca" => arch::pca::train(inputs, &data.rows, opts)?,
            _ => return Err(wrong("conv-ae or pca")),
        },
        ModelKind::Quality => {
            let target = data.target.as_ref().ok_or(TrainError::NoTarget { kind })?;
            match arch_name.as_str() {
                "ridge" => arch::ridge::train(inputs, &data.rows, target, false, opts)?,
                "ridge-mlp" => arch::ridge::train(inputs, &data.rows, target, true, opts)?,
                _ => return Err(wrong("ridge or ridge-mlp")),
            }
        }
        ModelKind::Rul => {
            if arch_name != "tcn" {
                return Err(wrong("tcn"));
            }
            train_rul(data, opts)?
        }
    };
    let weights = crate::nn::to_safetensors(&trained.weights).map_err(TrainError::Serialise)?;
    let manifest = Manifest {
        format: MANIFEST_FORMAT,
        kind,
        name: opts.name.clone(),
        version: opts.version.clone(),
        architecture: trained.architecture.to_string(),
        inputs: trained.inputs,
        window: trained.window,
        target: match kind {
            ModelKind::Anomaly => None,
            ModelKind::Quality => data.target_name.clone(),
            ModelKind::Rul => Some("rul".into()),
        },
        unit: opts.unit.clone(),
        training_data_sha256: data.sha256(),
        weights_sha256: sha256_hex(&weights),
        metrics: trained.metrics,
        normalization: trained.normalization,
        regimes: trained.regimes,
        lags: trained.lags,
        hyper: trained.hyper,
        calibration: trained.calibration,
    };
    Ok(Artifact { manifest, weights })
}

/// Remaining life per row: the target if given, else rows left to the end of its group.
pub fn rul_per_row(data: &Dataset) -> Vec<f32> {
    if let Some(t) = &data.target {
        return t.clone();
    }
    let mut out = vec![0.0; data.len()];
    for g in data.group_ranges() {
        for i in g.clone() {
            out[i] = (g.end - 1 - i) as f32;
        }
    }
    out
}

fn train_rul(data: &Dataset, opts: &TrainOptions) -> Result<Trained, TrainError> {
    let groups = data.group_ranges();
    let rul = rul_per_row(data);
    let all: Vec<&[f32]> = data.rows.iter().map(|r| r.as_slice()).collect();
    let d = data.columns.len();
    let by: Vec<usize> =
        opts.regime_columns.iter().map(|c| data.column(c).ok_or_else(|| TrainError::Column(c.clone()))).collect::<Result<_, _>>()?;
    // Drop signals that carry nothing within a regime (constant, or set by the regime).
    let first = if by.is_empty() { None } else { Some(Regimes::fit(&all, d, by.clone(), opts.regimes, opts.seed)) };
    let keep: Vec<usize> = (0..d)
        .filter(|&c| {
            if by.contains(&c) {
                return true;
            }
            match &first {
                Some(reg) => within_std(&all, reg, c) > 1e-4 * crate::norm::std_raw(&all, c).max(1e-9),
                None => crate::norm::std_raw(&all, c) > 1e-6,
            }
        })
        .collect();
    let inputs: Vec<String> = keep.iter().map(|&c| data.columns[c].clone()).collect();
    let rows: Vec<Vec<f32>> = data.rows.iter().map(|r| keep.iter().map(|&c| r[c]).collect()).collect();
    let kept: Vec<&[f32]> = rows.iter().map(|r| r.as_slice()).collect();
    let by_kept: Vec<usize> = by.iter().filter_map(|b| keep.iter().position(|k| k == b)).collect();
    let regimes = if by_kept.is_empty() { None } else { Some(Regimes::fit(&kept, keep.len(), by_kept, opts.regimes, opts.seed)) };
    let normalization = crate::norm::fit(&kept, keep.len());
    arch::tcn::train(inputs, &rows, &rul, &groups, regimes, normalization, opts)
}

/// Pooled standard deviation of column `c` within the regimes.
fn within_std(rows: &[&[f32]], reg: &Regimes, c: usize) -> f64 {
    let mut ss = 0.0f64;
    for r in rows {
        let s = &reg.stats[reg.regime_of(r)];
        ss += ((r[c] - s.mean[c]) as f64).powi(2);
    }
    (ss / rows.len().max(1) as f64).sqrt()
}
