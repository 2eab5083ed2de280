//! GPIO: the stack light beside the cabinet, relays for a horn, and digital inputs as tags.
//!
//! Outputs follow conditions of the agent (`running` blinks while the data path is alive;
//! `uplink_down`, `buffer_above`, `anomaly_active`, `device_lost` are alarms). Each has an
//! active level and a fail-safe level, written before the first state is known and when the
//! agent stops, so that a stopped agent reads as an alarm, never as "all fine". Inputs are
//! tags of the device `gpio`: a level, or a debounced pulse count that survives restarts.
//!
//! The pins sit behind [`pins::Pins`]: the Raspberry Pi's GPIO through `rppal` on ARM
//! builds, a simulated bank elsewhere (the levels then show on the status page only).

pub mod config;
pub mod counter;
pub mod pins;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, Receiver};
use std::time::{Duration, Instant};

use chrono::Utc;
use edge_drivers::{DeviceReport, Quality, ReportKind, Sample, Value};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use self::config::{Condition, GpioSettings, InputKind, Level, Output};
use self::counter::{CounterFile, Debouncer};
use self::pins::{Edge, Pins};
use crate::live::{Live, Snapshot};

/// The device name GPIO inputs are tags of.
pub const DEVICE: &str = "gpio";

/// How often inputs are settled and outputs set.
const TICK: Duration = Duration::from_millis(100);
/// Half the period of the `running` blink.
const BLINK_HALF: Duration = Duration::from_millis(500);
/// How often input tags are reported.
const REPORT_EVERY: Duration = Duration::from_secs(1);
/// How often changed counters are saved (a crash loses at most this much counting; a clean
/// stop saves at once).
const SAVE_EVERY: Duration = Duration::from_secs(5);

/// The GPIO part of the status page.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct GpioView {
    /// `rppal`, `simulated`, or empty when no `[gpio]` is configured.
    pub backend: String,
    pub outputs: Vec<OutputView>,
    pub inputs: Vec<InputView>,
    /// Writes or input set-ups the pins refused.
    pub errors: u64,
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct OutputView {
    pub pin: u8,
    pub when: Condition,
    /// Whether its condition holds (for `running`: the agent is alive).
    pub active: bool,
    pub level: Level,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct InputView {
    pub name: String,
    pub pin: u8,
    pub kind: InputKind,
    pub level: Level,
    /// For counters: the total, saved across restarts.
    pub count: Option<u64>,
}

/// The status page's view of the device `gpio` (its tags are the inputs; it is always
/// "connected": the pins are on the board).
pub fn device_view(settings: &GpioSettings) -> crate::live::DeviceView {
    crate::live::DeviceView {
        name: DEVICE.into(),
        protocol: DEVICE.into(),
        address: "local pins".into(),
        connected: true,
        since: Some(Utc::now()),
        tags: settings
            .inputs
            .iter()
            .map(|i| crate::live::TagView { name: i.name.clone(), unit: None, quality: "none".into(), ..Default::default() })
            .collect(),
        ..Default::default()
    }
}

/// The agent's conditions at one instant.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Conditions {
    pub alive: bool,
    pub uplink_down: bool,
    /// Outbox fill in percent of `store.max_bytes`.
    pub buffer_percent: f64,
    pub anomaly_active: bool,
    pub device_lost: bool,
}

impl Conditions {
    pub fn of(s: &Snapshot) -> Self {
        let core: Vec<_> = s.tasks.values().filter(|t| t.core).collect();
        Conditions {
            alive: !core.is_empty() && core.iter().all(|t| t.alive() && t.hung_for_s.is_none()),
            uplink_down: !s.uplink.connected,
            buffer_percent: if s.store.max_bytes > 0 { s.store.bytes as f64 * 100.0 / s.store.max_bytes as f64 } else { 0.0 },
            anomaly_active: s.models.values().any(|m| m.active),
            device_lost: s.devices.values().any(|d| d.name != DEVICE && !d.connected),
        }
    }

    /// Whether `output`'s condition holds.
    pub fn holds(&self, output: &Output) -> bool {
        match output.when {
            Condition::Running => self.alive,
            Condition::UplinkDown => self.uplink_down,
            Condition::BufferAbove => self.buffer_percent > output.percent,
            Condition::AnomalyActive => self.anomaly_active,
            Condition::DeviceLost => self.device_lost,
        }
    }
}

/// The level `output` should have: `running` blinks while alive (`blink_on` is the phase)
/// and rests at its inactive level when not; the alarms are steady.
pub fn level_of(output: &Output, c: &Conditions, blink_on: bool) -> Level {
    let active = c.holds(output);
    match output.when {
        Condition::Running if active && blink_on => output.active_level,
        Condition::Running => output.active_level.inverted(),
        _ if active => output.active_level,
        _ => output.active_level.inverted(),
    }
}

struct InputState {
    name: String,
    pin: u8,
    kind: InputKind,
    debouncer: Debouncer,
    /// The count saved before this start.
    base: u64,
}

impl InputState {
    fn count(&self) -> u64 {
        self.base + self.debouncer.rising
    }
}

/// Runs the outputs and inputs until `cancel`, then writes the fail-safe levels and saves
/// the counters. Input tags go to `reports` as the device `gpio`.
pub async fn run(
    settings: GpioSettings,
    mut pins: Box<dyn Pins>,
    live: Live,
    data_dir: PathBuf,
    reports: mpsc::Sender<DeviceReport>,
    cancel: CancellationToken,
) {
    let mut view = GpioView { backend: pins.backend().to_string(), ..Default::default() };
    let fail = |view: &mut GpioView, e: pins::GpioError| {
        tracing::warn!(error = %e, "gpio");
        view.errors += 1;
        view.last_error = Some(e.to_string());
    };
    // Fail-safe first: until the agent's state is known, nothing may read as "all fine".
    for o in &settings.outputs {
        if let Err(e) = pins.set(o.pin, o.fail_safe_level) {
            fail(&mut view, e);
        }
    }
    let file = CounterFile::new(&data_dir);
    let (saved, problem) = tokio::task::spawn_blocking({
        let file = file.clone();
        move || file.load()
    })
    .await
    .unwrap_or_default();
    if let Some(e) = problem {
        tracing::error!(error = %e, "gpio: pulse counters");
        view.errors += 1;
        view.last_error = Some(e.to_string());
    }
    let (edge_tx, edges): (_, Receiver<Edge>) = sync_channel(4096);
    let mut inputs: Vec<InputState> = Vec::new();
    for i in &settings.inputs {
        if let Err(e) = pins.watch(i.pin, i.pull, edge_tx.clone()) {
            fail(&mut view, e);
            continue;
        }
        let initial = pins.read(i.pin).unwrap_or(Level::Low);
        inputs.push(InputState {
            name: i.name.clone(),
            pin: i.pin,
            kind: i.kind,
            debouncer: Debouncer::new(initial, i.debounce),
            base: saved.get(&i.name).copied().unwrap_or(0),
        });
    }
    drop(edge_tx);
    let debounce_of: BTreeMap<u8, usize> = inputs.iter().enumerate().map(|(n, i)| (i.pin, n)).collect();
    let started = Instant::now();
    let mut last_report = Instant::now() - REPORT_EVERY;
    let mut last_save = Instant::now();
    let mut saved_counts: BTreeMap<String, u64> = inputs.iter().map(|i| (i.name.clone(), i.count())).collect();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tick.tick() => {}
        }
        let now = Instant::now();
        while let Ok(edge) = edges.try_recv() {
            if let Some(i) = debounce_of.get(&edge.pin).and_then(|&n| inputs.get_mut(n)) {
                i.debouncer.edge(edge.level, edge.at);
            }
        }
        for i in &mut inputs {
            i.debouncer.settle(now);
        }
        let conditions = live.read(Conditions::of);
        let blink_on = (now.duration_since(started).as_millis() / BLINK_HALF.as_millis()) % 2 == 0;
        view.outputs.clear();
        for o in &settings.outputs {
            let level = level_of(o, &conditions, blink_on);
            if let Err(e) = pins.set(o.pin, level) {
                fail(&mut view, e);
            }
            view.outputs.push(OutputView { pin: o.pin, when: o.when, active: conditions.holds(o), level });
        }
        view.inputs = inputs
            .iter()
            .map(|i| InputView {
                name: i.name.clone(),
                pin: i.pin,
                kind: i.kind,
                level: i.debouncer.level(),
                count: (i.kind == InputKind::Counter).then(|| i.count()),
            })
            .collect();
        live.update(|s| s.gpio = view.clone());
        if !inputs.is_empty() && now.duration_since(last_report) >= REPORT_EVERY {
            last_report = now;
            let _ = reports.try_send(DeviceReport { device: DEVICE.into(), kind: ReportKind::Samples(samples(&inputs)) });
        }
        if now.duration_since(last_save) >= SAVE_EVERY {
            last_save = now;
            save_if_changed(&file, &inputs, &mut saved_counts).await;
        }
    }
    for o in &settings.outputs {
        if let Err(e) = pins.set(o.pin, o.fail_safe_level) {
            tracing::error!(error = %e, "gpio: could not write the fail-safe level");
        }
    }
    save_if_changed(&file, &inputs, &mut saved_counts).await;
}

fn samples(inputs: &[InputState]) -> Vec<Sample> {
    let now = Utc::now();
    inputs
        .iter()
        .map(|i| Sample {
            tag: i.name.clone(),
            value: Some(match i.kind {
                InputKind::Level => Value::Bool(i.debouncer.level().is_high()),
                InputKind::Counter => Value::Int(i64::try_from(i.count()).unwrap_or(i64::MAX)),
            }),
            quality: Quality::Good,
            source_ts: now,
            server_ts: None,
            agent_ts: now,
        })
        .collect()
}

async fn save_if_changed(file: &CounterFile, inputs: &[InputState], saved: &mut BTreeMap<String, u64>) {
    let counts: BTreeMap<String, u64> =
        inputs.iter().filter(|i| i.kind == InputKind::Counter).map(|i| (i.name.clone(), i.count())).collect();
    if counts.is_empty() || &counts == saved {
        return;
    }
    let (file, to_save) = (file.clone(), counts.clone());
    match tokio::task::spawn_blocking(move || file.save(&to_save)).await {
        Ok(Ok(())) => *saved = counts,
        Ok(Err(e)) => tracing::error!(error = %e, "gpio: could not save the pulse counters"),
        Err(e) => tracing::error!(error = %e, "gpio: saving the pulse counters panicked"),
    }
}

#[cfg(test)]
mod tests;
