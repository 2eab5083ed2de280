//! The local models at run time: one dedicated thread per `[[models]]` entry, fed from
//! the agent's sample flow, raising events into the store and publishing predictions as
//! telemetry of the virtual device `analytics`.
//!
//! ```text
//! drivers ──reports──▶ feed (tee) ──▶ store writer
//!                        │  readings of each model's inputs (bounded queue, never blocks)
//!                        ▼
//!              model thread ×N: rows → window → infer → detector
//!                │ events (anomaly_started, quality_deviation, maintenance_due, model_loaded…)
//!                ▼                                   │ predictions
//!             sink task → outbox                      └──▶ store writer (device "analytics")
//! ```
//!
//! - [`config`]: `[[models]]` and `[calendar]`, and their validation.
//! - [`worker`]: a model's thread; [`window`]: rows with good-quality checks;
//!   [`detect`]: predictions → events; [`hold`]: minimum duration.
//! - [`calendar`]: `[calendar]` → the scheduler's hours from now (`edge_models::schedule`).
//! - [`embedded`]: the demo's artifacts, compiled in; [`sink`]: events → outbox.
//! - [`status`]: what the status page and `/metrics` show.
//! - [`warmup`]: a window filled at start from the demo's simulated history (demo only).
//!
//! A model that cannot be loaded (missing, corrupt, or not matching its config) raises
//! `model_failed` and is disabled; the other models and the rest of the agent run on.
//! `reload` restarts the agent, so every model is loaded again from its artifact.

pub mod calendar;
pub mod config;
pub mod detect;
pub mod embedded;
pub mod hold;
pub mod metrics;
pub mod sink;
pub mod status;
pub mod warmup;
pub mod window;
pub mod worker;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use chrono::Utc;
use edge_drivers::{DeviceReport, ReportKind};
use edge_models::ModelKind;
use tokio::sync::mpsc;
use tracing::{error, warn};

use self::detect::LabValue;
use self::status::{ModelCounters, ModelView};
use self::worker::{Input, Slot, Worker};
use crate::config::{Config, ModelRun};
use crate::live::Live;
use crate::store::StoredEventDraft;

/// Readings queued for one model's thread.
const INBOX: usize = 4096;

/// The running models.
pub struct Analytics {
    /// (device, tag) → the models (inbox, slot) reading it.
    routes: HashMap<(String, String), Vec<(usize, Slot)>>,
    inboxes: Vec<(SyncSender<Input>, Arc<ModelCounters>)>,
    lab: LabInbox,
    threads: Vec<JoinHandle<()>>,
}

/// Where lab values for quality models go (the `cmd/lab` command).
#[derive(Clone, Default)]
pub struct LabInbox {
    models: HashMap<String, (ModelKind, SyncSender<Input>, Arc<ModelCounters>)>,
}

impl LabInbox {
    /// Hands a lab value to the quality model `model`; the error says why not.
    pub fn send(&self, model: &str, value: f64, at: chrono::DateTime<Utc>) -> Result<(), String> {
        let Some((kind, inbox, counters)) = self.models.get(model) else {
            let mut names: Vec<&str> =
                self.models.iter().filter(|(_, (k, _, _))| *k == ModelKind::Quality).map(|(n, _)| n.as_str()).collect();
            names.sort_unstable();
            return Err(format!(
                "no model named {model:?} (quality models: {})",
                if names.is_empty() { "none".into() } else { names.join(", ") }
            ));
        };
        if *kind != ModelKind::Quality {
            return Err(format!("model {model:?} is a {} model; lab values go to quality models", kind.as_str()));
        }
        match inbox.try_send(Input::Lab(LabValue { value, at, source: "mqtt" })) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => {
                counters.samples_dropped.fetch_add(1, Ordering::Relaxed);
                Err(format!("model {model:?} is busy; send the lab value again"))
            }
            Err(TrySendError::Disconnected(_)) => Err(format!("model {model:?} is not running")),
        }
    }
}

impl Analytics {
    /// Starts one thread per model. `events` goes to the sink task, `telemetry` to the
    /// store writer.
    pub fn start(
        config: &Config,
        runs: &[ModelRun],
        live: &Live,
        events: mpsc::Sender<StoredEventDraft>,
        telemetry: mpsc::Sender<DeviceReport>,
    ) -> Analytics {
        let mut analytics = Analytics { routes: HashMap::new(), inboxes: Vec::new(), lab: LabInbox::default(), threads: Vec::new() };
        live.update(|s| {
            s.models = config
                .models
                .iter()
                .zip(runs)
                .map(|(m, run)| {
                    let view = ModelView {
                        name: m.name.clone(),
                        kind: m.kind.as_str().into(),
                        asset: run.asset.clone(),
                        artifact: m.artifact.clone(),
                        state: "loading".into(),
                        window: m.window.unwrap_or(0),
                        limits: status::ModelLimits::of(m),
                        trend: Some(status::ModelTrend::of(&m.name, m.kind)),
                        ..Default::default()
                    };
                    (m.name.clone(), view)
                })
                .collect();
        });
        for (index, (cfg, run)) in config.models.iter().zip(runs).enumerate() {
            let (tx, rx) = sync_channel(INBOX);
            let counters = Arc::new(ModelCounters::default());
            for (i, input) in cfg.inputs.iter().enumerate() {
                if let Some((d, t)) = input.split_once('/') {
                    analytics.routes.entry((d.into(), t.into())).or_default().push((index, Slot::Input(i)));
                }
            }
            if let Some((d, t)) = cfg.lab_tag.as_deref().and_then(|l| l.split_once('/')) {
                analytics.routes.entry((d.into(), t.into())).or_default().push((index, Slot::LabTag));
            }
            analytics.lab.models.insert(cfg.name.clone(), (cfg.kind, tx.clone(), counters.clone()));
            analytics.inboxes.push((tx, counters.clone()));
            let worker = Worker {
                gateway: config.gateway.id.clone(),
                cfg: cfg.clone(),
                run: run.clone(),
                calendar: config.calendar.clone(),
                live: live.clone(),
                events: events.clone(),
                telemetry: telemetry.clone(),
                counters,
            };
            match std::thread::Builder::new().name(format!("model-{}", cfg.name)).spawn(move || worker.run(rx)) {
                Ok(handle) => analytics.threads.push(handle),
                Err(e) => error!(model = %cfg.name, error = %e, "cannot start the model's thread"),
            }
        }
        analytics
    }

    /// The inbox for lab values (`cmd/lab`).
    pub fn lab_inbox(&self) -> LabInbox {
        self.lab.clone()
    }

    /// Hands the readings of a report to the models that read them. Never blocks: a full
    /// queue drops the reading and counts it.
    pub fn offer(&self, report: &DeviceReport) {
        let ReportKind::Samples(samples) = &report.kind else { return };
        let at = Instant::now();
        for s in samples {
            let Some(routes) = self.routes.get(&(report.device.clone(), s.tag.clone())) else { continue };
            for &(index, slot) in routes {
                let (inbox, counters) = &self.inboxes[index];
                let input = Input::Reading { slot, value: s.value.clone(), quality: s.quality.clone(), at };
                if let Err(TrySendError::Full(_)) = inbox.try_send(input) {
                    counters.samples_dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// Stops every model's thread (their inboxes close) and waits for them.
    pub fn stop(self) {
        let Analytics { inboxes, lab, threads, .. } = self;
        drop(inboxes);
        drop(lab);
        for t in threads {
            if t.join().is_err() {
                warn!("a model thread panicked");
            }
        }
    }
}
