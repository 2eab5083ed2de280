//! One model's thread: load the artifact, take rows from the readings the feed hands
//! over, run the model, turn predictions into events and telemetry. Never on the async
//! runtime's workers: inference takes the thread for its whole duration.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use edge_drivers::{DeviceReport, Quality, ReportKind, Sample, Value};
use edge_models::{Model, ModelKind, Prediction};
use serde_json::json;
use tokio::sync::mpsc::Sender;
use tracing::{error, info, warn};

use super::calendar::expand;
use super::config::{CalendarConfig, ModelConfig, ANALYTICS_DEVICE, EMBEDDED_PREFIX};
use super::detect::{AnomalyDetector, LabValue, ModelId, QualityDetector, RulDetector};
use super::status::{ModelCounters, ModelView, PredictionView};
use super::warmup::WARM_UP_STATE;
use super::window::{numeric, Windower};
use crate::config::ModelRun;
use crate::events::{Event, ModelFailed, ModelLoaded};
use crate::live::Live;
use crate::store::StoredEventDraft;

/// Where a reading goes in the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// Input `i` of the model.
    Input(usize),
    /// The quality model's `lab_tag`.
    LabTag,
}

/// What the feed and the command handler send to a model's thread.
#[derive(Debug)]
pub enum Input {
    Reading { slot: Slot, value: Option<Value>, quality: Quality, at: Instant },
    Lab(LabValue),
}

/// Everything a model's thread needs.
pub struct Worker {
    pub gateway: String,
    pub cfg: ModelConfig,
    /// The model's asset and period, resolved by the config's build step.
    pub run: ModelRun,
    pub calendar: CalendarConfig,
    pub live: Live,
    pub events: Sender<StoredEventDraft>,
    pub telemetry: Sender<DeviceReport>,
    pub counters: Arc<ModelCounters>,
}

enum Detector {
    Anomaly(AnomalyDetector),
    Quality(QualityDetector),
    Rul(RulDetector),
}

/// Loads the model of `cfg` and checks it against the config.
pub fn load(cfg: &ModelConfig) -> Result<Model, String> {
    let model = match cfg.artifact.strip_prefix(EMBEDDED_PREFIX) {
        Some(name) => super::embedded::load(name)?,
        None => Model::load(Path::new(&cfg.artifact)).map_err(|e| e.to_string())?,
    };
    let m = model.manifest();
    if m.kind != cfg.kind {
        return Err(format!("the artifact is a {} model, the config says kind = \"{}\"", m.kind.as_str(), cfg.kind.as_str()));
    }
    if m.inputs.len() != cfg.inputs.len() {
        return Err(format!("the model reads {} inputs ({}), the config lists {}", m.inputs.len(), m.inputs.join(", "), cfg.inputs.len()));
    }
    for (i, (want, got)) in m.inputs.iter().zip(&cfg.inputs).enumerate() {
        let tag = got.split_once('/').map_or(got.as_str(), |(_, t)| t);
        if want != tag && want != got {
            return Err(format!("input {i} of the model is {want:?}, the config gives {got:?} (same order as the manifest's inputs)"));
        }
    }
    if let Some(w) = cfg.window {
        if w != m.window {
            return Err(format!("the model's window is {} rows, the config says window = {w}", m.window));
        }
    }
    Ok(model)
}

/// The first back-off after a model's thread panicked, and the longest.
const RESTART_FIRST: Duration = Duration::from_secs(1);
const RESTART_MAX: Duration = Duration::from_secs(60);
/// A run this long resets the back-off to its first step.
const RESTART_RESET_AFTER: Duration = Duration::from_secs(60);

/// Runs `body` until it returns; after a panic, calls `on_panic` (with the panic's message
/// and the back-off), waits out the back-off while draining `inbox` (so the feed sees a
/// live queue and counts nothing as dropped), and runs `body` again. Returns when `body`
/// returns or the inbox's senders are all gone.
fn restart_on_panic<T>(inbox: &Receiver<T>, mut body: impl FnMut(&Receiver<T>), mut on_panic: impl FnMut(&str, Duration)) {
    let mut delay = RESTART_FIRST;
    loop {
        let started = Instant::now();
        let Err(payload) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| body(inbox))) else { return };
        if started.elapsed() >= RESTART_RESET_AFTER {
            delay = RESTART_FIRST;
        }
        on_panic(&crate::runtime::supervise::panic_message(payload), delay);
        let until = Instant::now() + delay;
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            match inbox.recv_timeout(left) {
                Ok(_) | Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
        delay = (delay * 2).min(RESTART_MAX);
    }
}

impl Worker {
    /// The thread's body: runs the model until every sender of `inbox` is gone. A panic
    /// (a bug, or a dependency that panics on data it did not expect) is contained: the
    /// model shows as failed with the panic's message, is counted, and is started again
    /// after a back-off, while the rest of the agent runs on. Restarting is safe: a model
    /// holds nothing that is not in the live state or the store, only its window, which
    /// fills again.
    pub fn run(self, inbox: Receiver<Input>) {
        let name = self.cfg.name.clone();
        restart_on_panic(
            &inbox,
            |inbox| self.run_once(inbox),
            |why, retry_in| {
                error!(model = %name, panic = %why, retry_in = ?retry_in, "the model's thread panicked; the model is started again");
                self.counters.panics.fetch_add(1, Ordering::Relaxed);
                self.counters.loaded.store(false, Ordering::Relaxed);
                self.set_view(|v| {
                    v.state = "failed".into();
                    v.error = Some(format!("panicked: {why}; started again in {} s", retry_in.as_secs()));
                    v.active = false;
                });
            },
        );
    }

    /// One run of the model: load it, then read, window and infer until the inbox closes.
    fn run_once(&self, inbox: &Receiver<Input>) {
        let name = self.cfg.name.clone();
        let model = match load(&self.cfg) {
            Ok(m) => m,
            Err(reason) => {
                error!(model = %name, artifact = %self.cfg.artifact, %reason, "model not loaded: it is disabled, the others run");
                self.set_view(|v| {
                    v.state = "failed".into();
                    v.error = Some(reason.clone());
                });
                self.raise(Event::ModelFailed(ModelFailed {
                    model: name.clone(),
                    kind: self.cfg.kind,
                    artifact: self.cfg.artifact.clone(),
                    reason,
                }));
                // Drain until shutdown so the feed sees a live queue (nothing is counted as dropped).
                while inbox.recv().is_ok() {}
                return;
            }
        };
        let m = model.manifest().clone();
        info!(model = %name, version = %m.version, architecture = %m.architecture, window = m.window, "model loaded");
        self.counters.loaded.store(true, Ordering::Relaxed);
        self.set_view(|v| {
            v.state = "running".into();
            v.version = Some(m.version.clone());
            v.architecture = Some(m.architecture.clone());
            v.unit = m.unit.clone();
            v.window = m.window;
        });
        self.raise(Event::ModelLoaded(ModelLoaded {
            model: name.clone(),
            version: m.version.clone(),
            kind: m.kind,
            artifact: self.cfg.artifact.clone(),
            architecture: m.architecture.clone(),
            inputs: self.cfg.inputs.clone(),
            window: m.window,
            unit: m.unit.clone(),
            training_data_sha256: m.training_data_sha256.clone(),
        }));

        let mut windower = Windower::new(self.cfg.inputs.clone(), m.window, self.cfg.row_interval);
        let mut detector = match m.kind {
            ModelKind::Anomaly => Detector::Anomaly(AnomalyDetector::new(&self.cfg, ModelId::new(&self.cfg, &m.version))),
            ModelKind::Quality => Detector::Quality(QualityDetector::new(&self.cfg, ModelId::new(&self.cfg, &m.version))),
            ModelKind::Rul => Detector::Rul(RulDetector::new(&self.cfg, &self.run.asset, ModelId::new(&self.cfg, &m.version))),
        };
        let row_interval = self.cfg.row_interval;
        let period = self.run.period;
        let mut next_row = Instant::now() + row_interval;
        let mut last_inference: Option<Instant> = None;
        if let Some(warm_up) = &self.cfg.warm_up {
            // The demo only: the window starts full of the simulated plant's recent past,
            // so the first output is on the page now (marked as warm-up, never published).
            windower.prefill(&warm_up.rows);
            let warm = windower.warm_rows();
            info!(model = %name, rows = warm, source = %warm_up.source, "window started with warm-up rows");
            self.set_view(|v| {
                v.filled = warm;
                v.warm_up_rows = warm;
            });
            if let Some(rows) = windower.window() {
                let now = Instant::now();
                last_inference = Some(now);
                self.infer(&model, &rows, &mut detector, now, warm);
            }
        }
        let mut last_lab_tag: Option<f64> = None;
        loop {
            match inbox.recv_timeout(next_row.saturating_duration_since(Instant::now())) {
                Ok(Input::Reading { slot: Slot::Input(i), value, quality, at }) => windower.record(i, &value, &quality, at),
                Ok(Input::Reading { slot: Slot::LabTag, value, quality, .. }) => {
                    // A new good value on the lab tag is a new lab result.
                    if let (true, Some(v)) = (quality.is_good(), numeric(&value)) {
                        if last_lab_tag != Some(v) {
                            last_lab_tag = Some(v);
                            self.lab(&mut detector, LabValue { value: v, at: Utc::now(), source: "tag" });
                        }
                    }
                }
                Ok(Input::Lab(lab)) => self.lab(&mut detector, lab),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            let now = Instant::now();
            if now < next_row {
                continue;
            }
            while next_row <= now {
                next_row += row_interval;
            }
            match windower.take_row(now) {
                Ok(()) => {
                    self.counters.rows.fetch_add(1, Ordering::Relaxed);
                }
                Err(gap) => {
                    self.counters.rows_skipped.fetch_add(1, Ordering::Relaxed);
                    let gap = gap.to_string();
                    self.set_view(|v| {
                        v.filled = 0;
                        v.last_gap = Some(gap);
                        end_warm_up(v);
                    });
                    continue;
                }
            }
            let due = last_inference.is_none_or(|t| now.saturating_duration_since(t) + row_interval / 2 >= period);
            let Some(rows) = windower.window().filter(|_| due) else {
                let (filled, warm) = (windower.filled(), windower.warm_rows());
                self.set_view(|v| {
                    v.filled = filled;
                    v.warm_up_rows = warm;
                    if warm == 0 {
                        end_warm_up(v);
                    }
                });
                continue;
            };
            last_inference = Some(now);
            self.infer(&model, &rows, &mut detector, now, windower.warm_rows());
        }
        info!(model = %name, "model thread stopped");
    }

    fn lab(&self, detector: &mut Detector, lab: LabValue) {
        let Detector::Quality(q) = detector else { return };
        self.counters.lab_values.fetch_add(1, Ordering::Relaxed);
        info!(model = %self.cfg.name, value = lab.value, source = lab.source, "lab value received");
        q.lab(lab);
        let view = json!({ "value": q.last_lab.as_ref().map(|l| l.value), "at": q.last_lab.as_ref().map(|l| crate::payload::rfc3339(l.at)), "source": q.last_lab.as_ref().map(|l| l.source), "bias": q.bias });
        self.set_view(|v| v.lab = Some(view));
    }

    /// Runs the model on `rows`; `warm`: how many of them are warm-up rows (then the
    /// output is shown on the page only: no detector, no event, no telemetry).
    fn infer(&self, model: &Model, rows: &[Vec<f32>], detector: &mut Detector, now: Instant, warm: usize) {
        let started = Instant::now();
        let result = model.infer(rows);
        let micros = started.elapsed().as_micros() as u64;
        self.counters.last_latency_us.store(micros, Ordering::Relaxed);
        self.counters.max_latency_us.fetch_max(micros, Ordering::Relaxed);
        let prediction = match result {
            Ok(p) => p,
            Err(e) => {
                let errors = self.counters.inference_errors.fetch_add(1, Ordering::Relaxed) + 1;
                // Logged at the first error and then every hundredth, with the count.
                if errors == 1 || errors % 100 == 0 {
                    warn!(model = %self.cfg.name, error = %e, errors, "inference failed");
                }
                self.set_view(|v| v.last_gap = Some(format!("inference failed: {e}")));
                return;
            }
        };
        self.counters.inferences.fetch_add(1, Ordering::Relaxed);
        let wall = Utc::now();
        if warm > 0 {
            let view = self.warm_up_view(model, &prediction, detector, wall);
            self.warm_up_history(&view, wall);
            let counters = self.counters.view();
            self.set_view(|v| {
                v.last_prediction = Some(view);
                v.filled = v.window;
                v.warm_up_rows = warm;
                v.state = WARM_UP_STATE.into();
                v.last_gap = None;
                v.counters = counters;
            });
            return;
        }
        let name = &self.cfg.name;
        let (view, raised, telemetry) = match (&prediction, detector) {
            (Prediction::Anomaly { score, contributions }, Detector::Anomaly(d)) => {
                let by_tag = self.by_tag(model, contributions);
                let raised = d.update(*score, &by_tag, now, wall);
                let view = PredictionView { at: Some(wall), value: *score as f64, lower: None, upper: None, contributions: by_tag };
                (view, raised, vec![(format!("{name}_score"), *score as f64), (format!("{name}_active"), f64::from(u8::from(d.active())))])
            }
            (Prediction::Quality { value, lower, upper }, Detector::Quality(d)) => {
                let (c, raised) = d.update(*value as f64, *lower as f64, *upper as f64, now, wall);
                let view =
                    PredictionView { at: Some(wall), value: c.value, lower: Some(c.lower), upper: Some(c.upper), contributions: vec![] };
                let t = vec![
                    (format!("{name}_value"), c.value),
                    (format!("{name}_lower"), c.lower),
                    (format!("{name}_upper"), c.upper),
                    (format!("{name}_bias"), d.bias),
                ];
                (view, raised, t)
            }
            (Prediction::Rul { value, lower, upper }, Detector::Rul(d)) => {
                let calendar = expand(&self.calendar, wall);
                let raised = d.update(*value as f64, *lower as f64, *upper as f64, &calendar, now, wall);
                let window = d.last_window.clone();
                self.set_view(|v| v.maintenance_window = window);
                let view = PredictionView {
                    at: Some(wall),
                    value: *value as f64,
                    lower: Some(*lower as f64),
                    upper: Some(*upper as f64),
                    contributions: vec![],
                };
                let t = vec![
                    (format!("{name}_value"), *value as f64),
                    (format!("{name}_lower"), *lower as f64),
                    (format!("{name}_upper"), *upper as f64),
                ];
                (view, raised, t)
            }
            _ => {
                // Checked at load: the manifest's kind is the config's kind.
                self.counters.inference_errors.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        self.publish(wall, telemetry);
        let active = match &raised {
            Some(r) => !r.ends_activity(),
            None => self.view_active(),
        };
        let counters = self.counters.view();
        self.set_view(|v| {
            v.last_prediction = Some(view);
            v.filled = v.window;
            v.last_gap = None;
            v.counters = counters;
            end_warm_up(v);
            if raised.is_some() {
                v.active = active;
            }
        });
        if let Some(r) = raised {
            self.raise(r);
        }
    }

    /// A prediction on a window that still holds warm-up rows, as the page shows it: the
    /// quality model's lab bias applied, the detectors left untouched.
    fn warm_up_view(&self, model: &Model, prediction: &Prediction, detector: &Detector, wall: chrono::DateTime<Utc>) -> PredictionView {
        let bias = match detector {
            Detector::Quality(q) => q.bias,
            _ => 0.0,
        };
        match prediction {
            Prediction::Anomaly { score, contributions } => PredictionView {
                at: Some(wall),
                value: *score as f64,
                lower: None,
                upper: None,
                contributions: self.by_tag(model, contributions),
            },
            Prediction::Quality { value, lower, upper } | Prediction::Rul { value, lower, upper } => PredictionView {
                at: Some(wall),
                value: *value as f64 + bias,
                lower: Some(*lower as f64 + bias),
                upper: Some(*upper as f64 + bias),
                contributions: vec![],
            },
        }
    }

    /// A warm-up output into the local history only (the page's model trend), under the
    /// tags it would be published as: the trend starts with the output the page shows.
    fn warm_up_history(&self, view: &PredictionView, wall: chrono::DateTime<Utc>) {
        let trend = super::status::ModelTrend::of(&self.cfg.name, self.cfg.kind);
        let values = [(Some(trend.value), Some(view.value)), (trend.lower, view.lower), (trend.upper, view.upper)];
        let samples: Vec<Sample> = values
            .into_iter()
            .filter_map(|(tag, v)| {
                Some(Sample {
                    tag: tag?,
                    value: Some(Value::Float(v?)),
                    quality: Quality::Good,
                    source_ts: wall,
                    server_ts: None,
                    agent_ts: wall,
                })
            })
            .collect();
        self.live.history().record(ANALYTICS_DEVICE, &samples);
    }

    /// Anomaly contributions by the config's `device/tag`, in the manifest's order.
    fn by_tag(&self, model: &Model, contributions: &[(String, f32)]) -> Vec<(String, f32)> {
        contributions
            .iter()
            .map(|(input, share)| {
                let i = model.manifest().inputs.iter().position(|x| x == input);
                (i.and_then(|i| self.cfg.inputs.get(i)).cloned().unwrap_or_else(|| input.clone()), *share)
            })
            .collect()
    }

    fn view_active(&self) -> bool {
        self.live.read(|s| s.models.get(&self.cfg.name).is_some_and(|v| v.active))
    }

    /// The prediction as telemetry of the virtual `analytics` device.
    fn publish(&self, wall: chrono::DateTime<Utc>, values: Vec<(String, f64)>) {
        let samples = values
            .into_iter()
            .map(|(tag, v)| Sample {
                tag,
                value: Some(Value::Float(v)),
                quality: Quality::Good,
                source_ts: wall,
                server_ts: None,
                agent_ts: wall,
            })
            .collect();
        let report = DeviceReport { device: ANALYTICS_DEVICE.into(), kind: ReportKind::Samples(samples) };
        if self.telemetry.try_send(report).is_err() {
            self.counters.telemetry_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Hands an event to the store's queue (never blocks; a full queue is counted and logged).
    fn raise(&self, event: Event) {
        let kind = event.kind();
        info!(model = %self.cfg.name, kind, asset = %self.run.asset, "{}", kind.replace('_', " "));
        let event = StoredEventDraft::now(self.gateway.as_str(), &self.run.asset, event);
        let ts = event.ts;
        if self.events.try_send(event).is_err() {
            self.counters.events_dropped.fetch_add(1, Ordering::Relaxed);
            error!(model = %self.cfg.name, kind, "event dropped: the queue to the store is full");
        } else {
            self.counters.events.fetch_add(1, Ordering::Relaxed);
        }
        let kind = kind.to_string();
        let counters = self.counters.view();
        self.set_view(|v| {
            v.last_event = Some(kind);
            v.last_event_at = Some(ts);
            v.counters = counters;
        });
    }

    fn set_view(&self, f: impl FnOnce(&mut ModelView)) {
        let name = &self.cfg.name;
        self.live.update(|s| {
            if let Some(v) = s.models.get_mut(name) {
                f(v);
            }
        });
    }
}

/// The window holds live rows only (or was emptied by a gap): the model is `running`.
fn end_warm_up(v: &mut ModelView) {
    v.warm_up_rows = 0;
    if v.state == WARM_UP_STATE {
        v.state = "running".into();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::sync_channel;

    #[test]
    fn a_model_thread_that_panics_is_reported_and_started_again_with_a_growing_back_off() {
        // Given a model body that panics on its first two runs, then runs until its inbox closes
        let (tx, rx) = sync_channel::<u32>(4);
        let mut runs = 0;
        let mut panics = Vec::new();
        let started = Instant::now();
        let closer = std::thread::spawn(move || {
            // The feed keeps offering readings meanwhile; then the agent stops.
            for i in 0..20 {
                let _ = tx.try_send(i);
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        // When it runs under restart_on_panic
        restart_on_panic(
            &rx,
            |inbox| {
                runs += 1;
                if runs <= 2 {
                    panic!("bad data {runs}");
                }
                while inbox.recv().is_ok() {}
            },
            |why, retry_in| panics.push((why.to_string(), retry_in)),
        );
        closer.join().unwrap();
        // Then each panic was reported with its message and a doubling back-off,
        assert_eq!(panics, vec![("bad data 1".to_string(), Duration::from_secs(1)), ("bad data 2".to_string(), Duration::from_secs(2))]);
        // the body ran a third time, and the back-off was waited out (not a busy loop)
        assert_eq!(runs, 3);
        assert!(started.elapsed() >= Duration::from_secs(3), "{:?}", started.elapsed());
    }

    #[test]
    fn a_model_thread_that_panics_while_the_agent_stops_is_not_started_again() {
        // Given a body that always panics and an inbox whose senders are gone
        let (tx, rx) = sync_channel::<u32>(1);
        drop(tx);
        let mut runs = 0;
        // When it runs under restart_on_panic
        restart_on_panic(
            &rx,
            |_| {
                runs += 1;
                panic!("always");
            },
            |_, _| {},
        );
        // Then it ran once: the back-off saw the closed inbox and returned
        assert_eq!(runs, 1);
    }
}
