//! The details of the model events, raised by the analytics workers: the model's identity
//! (`model`, `version`) and its figures. Numbers are rounded where they are computed
//! (`analytics/detect.rs`); thresholds configured as `f32` are sent widened to `f64`, as
//! they always were.

use edge_models::ModelKind;
use serde::{Deserialize, Serialize};

/// `model_loaded`: the artifact loaded, was checked against the config, and the model runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelLoaded {
    /// `models[].name`.
    pub model: String,
    /// The artifact's manifest version.
    pub version: String,
    pub kind: ModelKind,
    /// `models[].artifact`: a directory or `embedded:NAME`.
    pub artifact: String,
    pub architecture: String,
    pub inputs: Vec<String>,
    /// Rows per inference.
    pub window: usize,
    /// `null` when the model has no unit.
    pub unit: Option<String>,
    pub training_data_sha256: String,
}

/// `model_failed`: the artifact is missing, damaged or does not match the config; this
/// model is disabled, the others run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelFailed {
    pub model: String,
    pub kind: ModelKind,
    pub artifact: String,
    pub reason: String,
}

/// One input's share of an anomaly score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Contribution {
    /// The input, as `device/tag`.
    pub tag: String,
    /// Its share of the score, 0–1.
    pub share: f64,
}

/// `anomaly_started`: the score stayed at or above `score_on` for `min_duration`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnomalyStarted {
    pub model: String,
    pub version: String,
    /// The score now; 1.0 is the threshold calibrated at training.
    pub score: f64,
    /// `models[].score_on`.
    pub threshold: f64,
    /// The inputs that contribute most, largest first.
    pub contributions: Vec<Contribution>,
    /// When the score first crossed the threshold.
    pub started_at: String,
}

/// `anomaly_ended`: the score stayed below `score_off` for `min_duration`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnomalyEnded {
    pub model: String,
    pub version: String,
    pub score: f64,
    /// The highest score while the anomaly lasted.
    pub peak_score: f64,
    /// `models[].score_off`.
    pub threshold: f64,
    pub contributions: Vec<Contribution>,
    pub started_at: String,
    /// From `started_at` to now.
    pub duration_s: f64,
}

/// The last lab value a quality model has seen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LastLab {
    pub value: f64,
    pub at: String,
    /// `tag` (from `lab_tag`) or `mqtt` (from `cmd/lab`).
    pub source: String,
}

/// What every quality event says (`quality_common` in the schema): the prediction
/// corrected by the lab bias (`value = raw_value + bias`), its band, the specification
/// and the last lab value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QualityFigures {
    pub model: String,
    pub version: String,
    pub value: f64,
    pub lower: f64,
    pub upper: f64,
    /// The model's prediction before the bias correction.
    pub raw_value: f64,
    pub bias: f64,
    /// `null` when not configured.
    pub spec_min: Option<f64>,
    pub spec_max: Option<f64>,
    /// `null` before the first lab value.
    pub last_lab: Option<LastLab>,
}

/// `quality_deviation`: the corrected prediction (or its band) stayed outside the
/// specification for `min_duration`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QualityDeviation {
    #[serde(flatten)]
    pub figures: QualityFigures,
    /// `models[].band_outside_spec`.
    pub band_outside_spec: bool,
}

/// `quality_restored`: back inside the specification by `hysteresis` for `min_duration`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QualityRestored {
    #[serde(flatten)]
    pub figures: QualityFigures,
    /// The farthest outside the specification the value went.
    pub worst_value: f64,
    pub started_at: String,
    pub duration_s: f64,
}

/// A maintenance window the scheduler proposes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceWindow {
    pub start: String,
    pub end: String,
    /// The planned stop it falls in; `null`: production time.
    pub planned_stop: Option<String>,
    /// The probability that the asset fails before the window starts.
    pub failure_risk: f64,
}

/// `maintenance_due`: the 10 % point of the RUL band came closer than `notify_within`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceDue {
    pub model: String,
    pub version: String,
    /// Remaining useful life, hours (plant time), and the 10 % and 90 % points of its band.
    pub rul_h: f64,
    pub rul_lower_h: f64,
    pub rul_upper_h: f64,
    /// The proposed window; `null` when none was found.
    pub window: Option<MaintenanceWindow>,
    pub next_window: Option<MaintenanceWindow>,
    /// Probability of a failure before `next_window` starts.
    pub risk_of_waiting: f64,
    /// Why this window, in words.
    pub reason: String,
    /// `models[].maintenance_duration`, hours.
    pub duration_h: f64,
    /// `models[].crew`.
    pub crew: u32,
    /// False the first time, true when the proposed window moved.
    pub update: bool,
    /// No window within `models[].max_risk` was found: the event is `critical`, not
    /// `warning`. Not part of the details (the severity says it).
    #[serde(skip)]
    pub critical: bool,
}
