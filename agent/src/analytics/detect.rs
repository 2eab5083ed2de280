//! Predictions → events, one detector per model kind. Pure: the caller passes the clock.
//!
//! - anomaly: `anomaly_started` when the score stays at or above `score_on` for
//!   `min_duration`, `anomaly_ended` when it stays below `score_off` as long; both name
//!   the tags that contribute most.
//! - quality: the prediction corrected by the last lab value's bias; `quality_deviation`
//!   when it (or, if configured, its band) stays outside the specification for
//!   `min_duration`, `quality_restored` when it is back inside (by `hysteresis`) as long.
//! - rul: `maintenance_due` when the 10 % point of the RUL band is closer than
//!   `notify_within` for `min_duration`, with the scheduler's proposed window and the
//!   risk of waiting; raised again when the proposed window changes.

use std::time::Instant;

use chrono::{DateTime, Utc};
use edge_models::schedule::{propose, Calendar, Job, PlanOptions, RulEstimate, Window};

use super::calendar::at;
use super::config::ModelConfig;
use super::hold::{Change, Hold};
use crate::events::{
    AnomalyEnded, AnomalyStarted, Contribution, Event, LastLab, MaintenanceDue, MaintenanceWindow, QualityDeviation, QualityFigures,
    QualityRestored,
};
use crate::payload::rfc3339;

/// Which model a detector raises events for: `models[].name` and the artifact's version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelId {
    pub model: String,
    pub version: String,
}

impl ModelId {
    pub fn new(cfg: &ModelConfig, version: &str) -> Self {
        ModelId { model: cfg.name.clone(), version: version.to_string() }
    }
}

fn shares(contributions: &[(String, f32)], top: usize) -> Vec<Contribution> {
    contributions.iter().take(top).map(|(tag, share)| Contribution { tag: tag.clone(), share: round(*share as f64, 4) }).collect()
}

fn round(v: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (v * f).round() / f
}

/// `anomaly_started` / `anomaly_ended`.
#[derive(Debug)]
pub struct AnomalyDetector {
    id: ModelId,
    on: f32,
    off: f32,
    top: usize,
    hold: Hold,
    peak: f32,
    started_at: Option<DateTime<Utc>>,
}

impl AnomalyDetector {
    pub fn new(cfg: &ModelConfig, id: ModelId) -> Self {
        AnomalyDetector {
            id,
            on: cfg.score_on,
            off: cfg.score_off,
            top: cfg.top_tags,
            hold: Hold::new(cfg.min_duration),
            peak: 0.0,
            started_at: None,
        }
    }

    pub fn active(&self) -> bool {
        self.hold.active()
    }

    /// `contributions`: (input as `device/tag`, share), largest first.
    pub fn update(&mut self, score: f32, contributions: &[(String, f32)], now: Instant, wall: DateTime<Utc>) -> Option<Event> {
        let level = if self.hold.active() { self.off } else { self.on };
        let condition = score >= level;
        if self.hold.active() {
            self.peak = self.peak.max(score);
        }
        match self.hold.update(condition, now) {
            Change::None => None,
            Change::Raised => {
                self.peak = score;
                let since = self.hold.active_for(now).unwrap_or_default();
                let started = wall - chrono::Duration::from_std(since).unwrap_or_default();
                self.started_at = Some(started);
                Some(Event::AnomalyStarted(AnomalyStarted {
                    model: self.id.model.clone(),
                    version: self.id.version.clone(),
                    score: round(score as f64, 4),
                    threshold: f64::from(self.on),
                    contributions: shares(contributions, self.top),
                    started_at: rfc3339(started),
                }))
            }
            Change::Cleared => {
                let started = self.started_at.take().unwrap_or(wall);
                Some(Event::AnomalyEnded(AnomalyEnded {
                    model: self.id.model.clone(),
                    version: self.id.version.clone(),
                    score: round(score as f64, 4),
                    peak_score: round(self.peak as f64, 4),
                    threshold: f64::from(self.off),
                    contributions: shares(contributions, self.top),
                    started_at: rfc3339(started),
                    duration_s: round((wall - started).num_milliseconds() as f64 / 1000.0, 1),
                }))
            }
        }
    }
}

/// A lab result.
#[derive(Debug, Clone, PartialEq)]
pub struct LabValue {
    pub value: f64,
    pub at: DateTime<Utc>,
    /// `tag` (from `lab_tag`) or `mqtt` (from `cmd/lab`).
    pub source: &'static str,
}

/// `quality_deviation` / `quality_restored`, with the lab bias correction.
#[derive(Debug)]
pub struct QualityDetector {
    id: ModelId,
    spec_min: Option<f64>,
    spec_max: Option<f64>,
    band: bool,
    hysteresis: f64,
    gain: f64,
    hold: Hold,
    /// Added to every raw prediction; each lab value moves it by `lab_gain` of the way
    /// to (lab value − the raw prediction then).
    pub bias: f64,
    pub last_lab: Option<LabValue>,
    /// A lab value that came before the first prediction, applied at the first one.
    pending_lab: bool,
    last_raw: Option<f64>,
    started_at: Option<DateTime<Utc>>,
    worst: f64,
}

/// A quality prediction after the bias correction.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Corrected {
    pub value: f64,
    pub lower: f64,
    pub upper: f64,
}

impl QualityDetector {
    pub fn new(cfg: &ModelConfig, id: ModelId) -> Self {
        QualityDetector {
            id,
            spec_min: cfg.spec_min,
            spec_max: cfg.spec_max,
            band: cfg.band_outside_spec,
            hysteresis: cfg.hysteresis,
            gain: cfg.lab_gain,
            hold: Hold::new(cfg.min_duration),
            bias: 0.0,
            last_lab: None,
            pending_lab: false,
            last_raw: None,
            started_at: None,
            worst: f64::NAN,
        }
    }

    pub fn active(&self) -> bool {
        self.hold.active()
    }

    /// A new lab value: the bias moves `lab_gain` of the way to lab − the latest raw prediction.
    pub fn lab(&mut self, lab: LabValue) {
        match self.last_raw {
            Some(raw) => self.bias += self.gain * (lab.value - raw - self.bias),
            None => self.pending_lab = true,
        }
        self.last_lab = Some(lab);
    }

    fn outside(&self, c: &Corrected, margin: f64) -> bool {
        let (lo, hi) = if self.band { (c.lower, c.upper) } else { (c.value, c.value) };
        self.spec_min.is_some_and(|m| lo < m + margin) || self.spec_max.is_some_and(|m| hi > m - margin)
    }

    pub fn update(&mut self, value: f64, lower: f64, upper: f64, now: Instant, wall: DateTime<Utc>) -> (Corrected, Option<Event>) {
        self.last_raw = Some(value);
        if self.pending_lab {
            self.pending_lab = false;
            if let Some(lab) = &self.last_lab {
                self.bias += self.gain * (lab.value - value - self.bias);
            }
        }
        let c = Corrected { value: value + self.bias, lower: lower + self.bias, upper: upper + self.bias };
        // Hysteresis: once deviating, it must come back inside by `hysteresis` to count as restored.
        let condition = if self.hold.active() { self.outside(&c, self.hysteresis) } else { self.outside(&c, 0.0) };
        if self.hold.active() {
            let dist = |v: f64| {
                let below = self.spec_min.map_or(0.0, |m| m - v);
                let above = self.spec_max.map_or(0.0, |m| v - m);
                below.max(above)
            };
            if self.worst.is_nan() || dist(c.value) > dist(self.worst) {
                self.worst = c.value;
            }
        }
        let figures = |c: &Corrected, this: &Self| QualityFigures {
            model: this.id.model.clone(),
            version: this.id.version.clone(),
            value: round(c.value, 4),
            lower: round(c.lower, 4),
            upper: round(c.upper, 4),
            raw_value: round(value, 4),
            bias: round(this.bias, 4),
            spec_min: this.spec_min,
            spec_max: this.spec_max,
            last_lab: this.last_lab.as_ref().map(|l| LastLab { value: l.value, at: rfc3339(l.at), source: l.source.to_string() }),
        };
        let raised = match self.hold.update(condition, now) {
            Change::None => None,
            Change::Raised => {
                let since = self.hold.active_for(now).unwrap_or_default();
                self.started_at = Some(wall - chrono::Duration::from_std(since).unwrap_or_default());
                self.worst = c.value;
                Some(Event::QualityDeviation(QualityDeviation { figures: figures(&c, self), band_outside_spec: self.band }))
            }
            Change::Cleared => {
                let started = self.started_at.take().unwrap_or(wall);
                let restored = QualityRestored {
                    figures: figures(&c, self),
                    worst_value: round(self.worst, 4),
                    started_at: rfc3339(started),
                    duration_s: round((wall - started).num_milliseconds() as f64 / 1000.0, 1),
                };
                self.worst = f64::NAN;
                Some(Event::QualityRestored(restored))
            }
        };
        (c, raised)
    }
}

/// `maintenance_due`, with the window the scheduler proposes.
#[derive(Debug)]
pub struct RulDetector {
    id: ModelId,
    notify_within_h: f64,
    duration_h: f64,
    crew: u32,
    max_risk: f64,
    asset: String,
    hold: Hold,
    /// The window last announced (start time), to announce a change.
    announced: Option<DateTime<Utc>>,
    pub last_window: Option<MaintenanceWindow>,
}

impl RulDetector {
    pub fn new(cfg: &ModelConfig, asset: &str, id: ModelId) -> Self {
        RulDetector {
            id,
            notify_within_h: cfg.notify_within.as_secs_f64() / 3600.0,
            duration_h: cfg.maintenance_duration.as_secs_f64() / 3600.0,
            crew: cfg.crew,
            max_risk: cfg.max_risk,
            asset: asset.to_string(),
            hold: Hold::new(cfg.min_duration),
            announced: None,
            last_window: None,
        }
    }

    pub fn active(&self) -> bool {
        self.hold.active()
    }

    /// `value`, `lower`, `upper`: RUL in hours. `calendar`: expanded at `wall`.
    pub fn update(&mut self, value: f64, lower: f64, upper: f64, calendar: &Calendar, now: Instant, wall: DateTime<Utc>) -> Option<Event> {
        let change = self.hold.update(lower < self.notify_within_h, now);
        if change == Change::Cleared {
            self.announced = None;
            self.last_window = None;
        }
        if !self.hold.active() {
            return None;
        }
        let job = Job { asset: self.asset.clone(), rul: RulEstimate { value, lower, upper }, duration: self.duration_h, crew: self.crew };
        let proposal = propose(&[job], calendar, &PlanOptions { max_risk: self.max_risk, ..Default::default() }).pop()?;
        let window_of = |w: &Window| MaintenanceWindow {
            start: rfc3339(at(wall, w.start)),
            end: rfc3339(at(wall, w.end)),
            planned_stop: w.planned_stop.clone(),
            failure_risk: round(w.failure_risk, 4),
        };
        let start = proposal.window.as_ref().map(|w| at(wall, w.start));
        let window = proposal.window.as_ref().map(window_of);
        self.last_window = window.clone();
        // Announce on raising, and again when the proposed window moves by more than an hour.
        let moved = match (self.announced, start) {
            (Some(a), Some(s)) => (s - a).num_minutes().abs() > 60,
            (None, _) => true,
            (Some(_), None) => true,
        };
        if change != Change::Raised && !moved {
            return None;
        }
        self.announced = start;
        let critical = proposal.window.as_ref().is_none_or(|w| w.failure_risk > self.max_risk);
        Some(Event::MaintenanceDue(MaintenanceDue {
            model: self.id.model.clone(),
            version: self.id.version.clone(),
            rul_h: round(value, 2),
            rul_lower_h: round(lower, 2),
            rul_upper_h: round(upper, 2),
            window,
            next_window: proposal.next.as_ref().map(window_of),
            risk_of_waiting: round(proposal.risk_of_waiting, 4),
            reason: proposal.reason,
            duration_h: round(self.duration_h, 3),
            crew: self.crew,
            update: change != Change::Raised,
            critical,
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use edge_models::schedule::PlannedStop;

    use serde_json::json;

    use super::*;

    fn id() -> ModelId {
        ModelId { model: "m".into(), version: "1".into() }
    }

    fn cfg(kind: &str, extra: &str) -> ModelConfig {
        let text = format!("name = \"m\"\nkind = \"{kind}\"\nartifact = \"/x\"\ninputs = [\"plc/a\"]\n{extra}");
        toml::from_str(&text).unwrap()
    }

    #[test]
    fn an_anomaly_starts_above_on_and_ends_below_off_naming_the_top_tags() {
        let mut d = AnomalyDetector::new(&cfg("anomaly", "min_duration = \"2s\"\ntop_tags = 1"), id());
        let t0 = Instant::now();
        let wall = Utc::now();
        let s = Duration::from_secs(1);
        let contrib = vec![("plc/a".to_string(), 0.7f32), ("plc/b".to_string(), 0.3)];
        assert!(d.update(1.5, &contrib, t0, wall).is_none());
        let started = d.update(1.6, &contrib, t0 + 2 * s, wall).expect("started after 2 s");
        assert_eq!(started.kind(), "anomaly_started");
        assert_eq!(started.details().unwrap()["contributions"], json!([{ "tag": "plc/a", "share": 0.7 }]));
        // Between off and on it stays
        assert!(d.update(0.9, &contrib, t0 + 5 * s, wall).is_none());
        assert!(d.update(0.9, &contrib, t0 + 9 * s, wall).is_none());
        assert!(d.update(0.5, &contrib, t0 + 10 * s, wall).is_none());
        let ended = d.update(0.5, &contrib, t0 + 12 * s, wall).expect("ended");
        assert_eq!(ended.kind(), "anomaly_ended");
        assert_eq!(ended.details().unwrap()["peak_score"], json!(1.6));
    }

    #[test]
    fn the_last_lab_value_corrects_the_prediction_and_a_deviation_is_raised_then_restored() {
        let mut d = QualityDetector::new(&cfg("quality", "spec_min = 85.0\nhysteresis = 0.2\nlab_gain = 1.0"), id());
        let t0 = Instant::now();
        let wall = Utc::now();
        let (c, e) = d.update(86.0, 85.5, 86.5, t0, wall);
        assert_eq!((c.value, e), (86.0, None));
        // Given a lab value 1.5 below the prediction
        d.lab(LabValue { value: 84.5, at: wall, source: "mqtt" });
        // Then the next prediction is corrected by −1.5 and is out of spec
        let (c, e) = d.update(86.0, 85.5, 86.5, t0, wall);
        assert_eq!(c.value, 84.5);
        let e = e.expect("deviation");
        assert_eq!(e.kind(), "quality_deviation");
        assert_eq!(e.details().unwrap()["bias"], json!(-1.5));
        assert_eq!(e.details().unwrap()["last_lab"]["source"], json!("mqtt"));
        // A corrected value just inside spec, within the hysteresis, does not restore it
        assert!(d.update(86.6, 86.0, 87.0, t0, wall).1.is_none());
        let (_, e) = d.update(87.0, 86.5, 87.5, t0, wall);
        assert_eq!(e.expect("restored").kind(), "quality_restored");
    }

    #[test]
    fn the_band_counts_only_when_configured() {
        let mut value_only = QualityDetector::new(&cfg("quality", "spec_min = 85.0"), id());
        let mut band = QualityDetector::new(&cfg("quality", "spec_min = 85.0\nband_outside_spec = true"), id());
        let (t0, wall) = (Instant::now(), Utc::now());
        assert!(value_only.update(85.5, 84.8, 86.2, t0, wall).1.is_none());
        assert!(band.update(85.5, 84.8, 86.2, t0, wall).1.is_some());
    }

    #[test]
    fn maintenance_due_proposes_the_planned_stop_and_is_announced_once() {
        let mut d = RulDetector::new(&cfg("rul", "notify_within = \"7d\"\nmaintenance_duration = \"8h\""), "m", id());
        let (t0, wall) = (Instant::now(), Utc::now());
        let cal = Calendar {
            shifts: vec![],
            stops: vec![PlannedStop { name: "sunday".into(), start: 20.0, end: 32.0, crew: None }],
            horizon: 24.0 * 28.0,
            booked: vec![],
        };
        // Far from failure: nothing
        assert!(d.update(900.0, 800.0, 1000.0, &cal, t0, wall).is_none());
        // Within notify_within: due, in the Sunday stop
        let e = d.update(60.0, 45.0, 80.0, &cal, t0, wall).expect("due");
        assert_eq!(e.kind(), "maintenance_due");
        assert_eq!(e.details().unwrap()["window"]["planned_stop"], json!("sunday"));
        assert_eq!(e.details().unwrap()["window"]["start"], json!(rfc3339(at(wall, 20.0))));
        assert!(e.details().unwrap()["risk_of_waiting"].as_f64().unwrap() > 0.5);
        // The same estimate again: not announced twice
        assert!(d.update(59.0, 44.0, 79.0, &cal, t0, wall).is_none());
    }
}
