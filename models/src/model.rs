//! A loaded model and its one entry point, [`Model::infer`].

use std::path::Path;

use crate::arch::{self, Loaded};
use crate::artifact::{Artifact, ArtifactError};
use crate::manifest::Manifest;

/// What a model says about one window.
#[derive(Debug, Clone, PartialEq)]
pub enum Prediction {
    /// `score` normalised so that 1.0 is the calibrated alarm threshold;
    /// `contributions`: (input name, share of the score), largest first, shares sum to ~1.
    Anomaly { score: f32, contributions: Vec<(String, f32)> },
    /// Point prediction and an uncertainty band (10 %–90 % of held-back residuals).
    Quality { value: f32, lower: f32, upper: f32 },
    /// Remaining useful life in `manifest.unit`, with a band (10 %–90 %).
    Rul { value: f32, lower: f32, upper: f32 },
}

/// Why one inference was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("expected {expected_rows} rows of {expected_cols} values, got {rows} rows (first with {cols} values)")]
    Shape { expected_rows: usize, expected_cols: usize, rows: usize, cols: usize },
    #[error("input {input} is not a finite number")]
    NonFinite { input: String },
    #[error("model computation failed: {0}")]
    Candle(candle_core::Error),
}

// Not `#[from]`: the Candle error would also be the source and print twice in a chain.
impl From<candle_core::Error> for ModelError {
    fn from(e: candle_core::Error) -> Self {
        ModelError::Candle(e)
    }
}

/// A loaded, checked model. `Send`; inference is single-threaded.
pub struct Model {
    manifest: Manifest,
    loaded: Loaded,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model").field("name", &self.manifest.name).field("architecture", &self.manifest.architecture).finish()
    }
}

impl Model {
    /// Loads `dir/manifest.json` and `dir/weights.safetensors`, verifies format and checksum,
    /// and that the weights fit the manifest.
    pub fn load(dir: &Path) -> Result<Model, ArtifactError> {
        Model::from_artifact(dir, Artifact::load(dir)?)
    }

    /// Same, from bytes (for artifacts embedded in the binary with `include_bytes!`).
    pub fn from_bytes(manifest_json: &[u8], weights: &[u8]) -> Result<Model, ArtifactError> {
        let origin = Path::new("<embedded artifact>");
        Model::from_artifact(origin, Artifact::from_bytes_at(origin, manifest_json, weights.to_vec())?)
    }

    /// A model from an artifact already in memory (e.g. just trained).
    pub fn from_artifact(origin: &Path, artifact: Artifact) -> Result<Model, ArtifactError> {
        let weights_err = |reason: String| ArtifactError::Weights { path: origin.to_path_buf(), reason };
        let m = &artifact.manifest;
        if m.window == 0 || m.inputs.is_empty() {
            return Err(weights_err(format!("window {} and {} inputs: both must be at least 1", m.window, m.inputs.len())));
        }
        let loaded = arch::load(m, &artifact.weights).map_err(weights_err)?;
        Ok(Model { manifest: artifact.manifest, loaded })
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// `rows`: exactly `manifest.window` rows, oldest first, each `manifest.inputs.len()` raw
    /// values (engineering units) in input order. The model normalises internally.
    pub fn infer(&self, rows: &[Vec<f32>]) -> Result<Prediction, ModelError> {
        let m = &self.manifest;
        let cols = m.inputs.len();
        if rows.len() != m.window || rows.iter().any(|r| r.len() != cols) {
            let bad = rows.iter().find(|r| r.len() != cols).or(rows.first()).map_or(0, |r| r.len());
            return Err(ModelError::Shape { expected_rows: m.window, expected_cols: cols, rows: rows.len(), cols: bad });
        }
        for row in rows {
            if let Some(i) = row.iter().position(|v| !v.is_finite()) {
                return Err(ModelError::NonFinite { input: m.inputs[i].clone() });
            }
        }
        arch::infer(&self.loaded, m, rows)
    }

    /// Scores many windows at once (evaluation, calibration): windows ending at each of
    /// `ends` in `rows` (each end ≥ window-1). Same results as `infer` one by one.
    pub fn infer_many(&self, rows: &[Vec<f32>], ends: &[usize]) -> Result<Vec<Prediction>, ModelError> {
        let m = &self.manifest;
        let cols = m.inputs.len();
        let short = ends.iter().any(|&e| e + 1 < m.window || e >= rows.len());
        if let Some(bad) = rows.iter().find(|r| r.len() != cols).map(|r| r.len()).or(short.then_some(cols)) {
            return Err(ModelError::Shape { expected_rows: m.window, expected_cols: cols, rows: rows.len(), cols: bad });
        }
        for row in rows {
            if let Some(i) = row.iter().position(|v| !v.is_finite()) {
                return Err(ModelError::NonFinite { input: m.inputs[i].clone() });
            }
        }
        arch::infer_many(&self.loaded, m, rows, ends)
    }
}
