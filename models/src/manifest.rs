//! `manifest.json`: what a model is, what it reads, how it normalises and where it alarms.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Bumped on any change of the manifest layout or of an architecture's weights layout, so
/// that an agent never runs weights it would misread. 2: per-regime normalisation and
/// ensembles (`members`) for `tcn`, lagged inputs for quality. 3: `tcn` heads on each time
/// step (no mean pooling) with its window ≥ its receptive field; `ridge-mlp` corrections
/// from an ensemble `mlp0…` (hyper `mlp_members`).
pub const MANIFEST_FORMAT: u32 = 3;

/// What a model predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    Anomaly,
    Quality,
    Rul,
}

impl ModelKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ModelKind::Anomaly => "anomaly",
            ModelKind::Quality => "quality",
            ModelKind::Rul => "rul",
        }
    }
}

impl std::fmt::Display for ModelKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `manifest.json` of an artifact directory (next to `weights.safetensors`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// [`MANIFEST_FORMAT`] of the code that wrote it.
    pub format: u32,
    pub kind: ModelKind,
    /// e.g. "mill-bearing-rul".
    pub name: String,
    /// Free text, e.g. "2026-11-28.1".
    pub version: String,
    /// "conv-ae", "pca", "ridge", "ridge-mlp", "tcn".
    pub architecture: String,
    /// Input column / tag names, in the order `Model::infer` expects them.
    pub inputs: Vec<String>,
    /// Rows per inference, oldest first (1 for a pure per-row model).
    pub window: usize,
    /// Quality: the predicted lab value; rul: "rul".
    pub target: Option<String>,
    /// Unit of the prediction (e.g. "%", "h", "cycles").
    pub unit: Option<String>,
    /// SHA-256 of the training table (column names, then every value), hex.
    pub training_data_sha256: String,
    /// SHA-256 of `weights.safetensors`, hex; checked at load.
    pub weights_sha256: String,
    /// Metrics measured at training time on held-back data (names say which).
    pub metrics: BTreeMap<String, f64>,
    /// Per-input normalisation (mean, standard deviation) fitted on the training data.
    #[serde(default)]
    pub normalization: Normalization,
    /// Per-operating-regime normalisation (rul): replaces `normalization` when present.
    #[serde(default)]
    pub regimes: Option<Regimes>,
    /// Quality: the lags (rows back from the newest) of each input fed to the model;
    /// `window` is the largest lag + 1.
    #[serde(default)]
    pub lags: Vec<usize>,
    /// Architecture hyper-parameters (layer widths, kernel, members…).
    #[serde(default)]
    pub hyper: BTreeMap<String, f64>,
    /// Calibration: alarm threshold of the raw score, band offsets, caps.
    #[serde(default)]
    pub calibration: BTreeMap<String, f64>,
}

/// Per-input mean and standard deviation.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Normalization {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

/// Operating regimes found by clustering some inputs (e.g. altitude, Mach, throttle): each
/// row is normalised with the statistics of its nearest regime, so that a change of
/// operating point is not mistaken for degradation.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Regimes {
    /// Indices (into `inputs`) of the columns that define the regime.
    pub by: Vec<usize>,
    /// Scale of each `by` column used for the distance (its global standard deviation).
    pub by_scale: Vec<f32>,
    /// One centroid per regime, in the `by` columns' raw units.
    pub centroids: Vec<Vec<f32>>,
    /// Per regime, per input: normalisation.
    pub stats: Vec<Normalization>,
}
