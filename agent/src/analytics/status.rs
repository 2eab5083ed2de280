//! What the status page, `/api/status` and `/metrics` show about each model, and the
//! counters its thread and the sample feed keep.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use chrono::{DateTime, Utc};
use serde::Serialize;

/// Counters of one model; only grow (the latencies are gauges).
#[derive(Debug, Default)]
pub struct ModelCounters {
    pub loaded: AtomicBool,
    pub inferences: AtomicU64,
    pub inference_errors: AtomicU64,
    pub rows: AtomicU64,
    /// Rows not taken: an input bad, missing or stale (the window started again).
    pub rows_skipped: AtomicU64,
    /// Readings not handed to the model's thread because its queue was full.
    pub samples_dropped: AtomicU64,
    pub events: AtomicU64,
    /// Events (and prediction telemetry) not stored because the queue to the store was full.
    pub events_dropped: AtomicU64,
    pub telemetry_dropped: AtomicU64,
    pub last_latency_us: AtomicU64,
    pub max_latency_us: AtomicU64,
    pub lab_values: AtomicU64,
    /// Times the model's thread panicked (contained; the model was started again).
    pub panics: AtomicU64,
}

/// A copy of [`ModelCounters`] for a snapshot.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct CountersView {
    pub inferences: u64,
    pub inference_errors: u64,
    pub rows: u64,
    pub rows_skipped: u64,
    pub samples_dropped: u64,
    pub events: u64,
    pub events_dropped: u64,
    pub telemetry_dropped: u64,
    pub last_latency_us: u64,
    pub max_latency_us: u64,
    pub lab_values: u64,
    pub panics: u64,
}

impl ModelCounters {
    pub fn view(&self) -> CountersView {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        CountersView {
            inferences: l(&self.inferences),
            inference_errors: l(&self.inference_errors),
            rows: l(&self.rows),
            rows_skipped: l(&self.rows_skipped),
            samples_dropped: l(&self.samples_dropped),
            events: l(&self.events),
            events_dropped: l(&self.events_dropped),
            telemetry_dropped: l(&self.telemetry_dropped),
            last_latency_us: l(&self.last_latency_us),
            max_latency_us: l(&self.max_latency_us),
            lab_values: l(&self.lab_values),
            panics: l(&self.panics),
        }
    }
}

/// One model on the status page.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ModelView {
    pub name: String,
    /// `anomaly`, `quality` or `rul`.
    pub kind: String,
    pub asset: String,
    pub artifact: String,
    /// `loading`, `running`, `warm-up` (running, but its window still holds warm-up rows:
    /// the demo's simulated history; outputs shown here only, neither published nor
    /// evented) or `failed`.
    pub state: String,
    /// Why it failed to load (the model is disabled; the others run).
    pub error: Option<String>,
    pub version: Option<String>,
    pub architecture: Option<String>,
    pub unit: Option<String>,
    pub window: usize,
    /// Rows in the window now (inference starts when it is full).
    pub filled: usize,
    /// Rows of the window that are warm-up rows, not live readings (the demo only; 0 on
    /// a real plant). Each live row pushes one out.
    pub warm_up_rows: usize,
    /// Why the last row could not be taken.
    pub last_gap: Option<String>,
    pub last_prediction: Option<PredictionView>,
    /// An anomaly, a quality deviation or a maintenance due is active.
    pub active: bool,
    pub last_event: Option<String>,
    pub last_event_at: Option<DateTime<Utc>>,
    /// Quality: the last lab value and the bias it set.
    pub lab: Option<serde_json::Value>,
    /// RUL: the window last proposed.
    pub maintenance_window: Option<crate::events::MaintenanceWindow>,
    pub counters: CountersView,
    /// What the output is judged against (from the config), for the page's trend.
    pub limits: ModelLimits,
    /// Where the output's history is: tags of the virtual device `analytics`.
    pub trend: Option<ModelTrend>,
}

/// The limits a model's output is drawn against.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct ModelLimits {
    /// Anomaly: the score that starts an anomaly (`score_on`; 1.0 = the calibrated threshold).
    pub score_on: Option<f64>,
    /// Anomaly: the score below which it ends (`score_off`).
    pub score_off: Option<f64>,
    /// Quality: the specification (`spec_min`, `spec_max`).
    pub spec_min: Option<f64>,
    pub spec_max: Option<f64>,
    /// RUL: `notify_within` in hours (maintenance is due when the band's low end is closer).
    pub notify_within_h: Option<f64>,
}

impl ModelLimits {
    pub fn of(cfg: &super::config::ModelConfig) -> Self {
        match cfg.kind {
            edge_models::ModelKind::Anomaly => {
                ModelLimits { score_on: Some(f64::from(cfg.score_on)), score_off: Some(f64::from(cfg.score_off)), ..Default::default() }
            }
            edge_models::ModelKind::Quality => ModelLimits { spec_min: cfg.spec_min, spec_max: cfg.spec_max, ..Default::default() },
            edge_models::ModelKind::Rul => {
                ModelLimits { notify_within_h: Some(cfg.notify_within.as_secs_f64() / 3600.0), ..Default::default() }
            }
        }
    }
}

/// The tags of the `analytics` device a model's predictions are published (and kept in
/// the local history) as.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct ModelTrend {
    pub device: String,
    /// The score (anomaly) or the value (quality, bias-corrected; RUL).
    pub value: String,
    /// The band's ends (quality, RUL).
    pub lower: Option<String>,
    pub upper: Option<String>,
}

impl ModelTrend {
    pub fn of(name: &str, kind: edge_models::ModelKind) -> Self {
        let device = super::config::ANALYTICS_DEVICE.to_string();
        match kind {
            edge_models::ModelKind::Anomaly => ModelTrend { device, value: format!("{name}_score"), lower: None, upper: None },
            edge_models::ModelKind::Quality | edge_models::ModelKind::Rul => ModelTrend {
                device,
                value: format!("{name}_value"),
                lower: Some(format!("{name}_lower")),
                upper: Some(format!("{name}_upper")),
            },
        }
    }
}

/// The last output of a model (bias-corrected for quality).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct PredictionView {
    pub at: Option<DateTime<Utc>>,
    /// Anomaly score (1.0 = threshold), quality value, or RUL.
    pub value: f64,
    pub lower: Option<f64>,
    pub upper: Option<f64>,
    /// Anomaly: (input, share) largest first.
    pub contributions: Vec<(String, f32)>,
}
