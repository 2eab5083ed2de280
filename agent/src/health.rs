//! The health verdict: one answer to "is this gateway all right?", computed in the agent
//! from the live snapshot (tasks, store, uplink, devices, models), with the reasons in
//! words. The status page, `/api/status`, `/metrics` and `/readyz` show this value and
//! nothing else; systemd's `STATUS=`, the GPIO stack light and the MCP `factory_status`
//! tool are meant to read it too.
//!
//! The levels, from best to worst (a verdict is the worst level among its reasons):
//! - **ok**: every task runs, the store takes writes, the uplink is connected with no old
//!   backlog, every device and model is up, nothing is abnormal in the process.
//! - **attention**: the gateway works, the *process* needs an operator's eye: a model
//!   reports an anomaly, a quality deviation or maintenance due.
//! - **degraded**: the gateway works but part of it does not, and data is buffered, late or
//!   missing for part of the plant: the uplink is down or its backlog is old, a device is
//!   not connected or, connected, is polled at less than 80 % of its configured rate over a
//!   whole measurement window (its data comes late), a model is not loaded, the store is nearly full, a task restarted lately
//!   or a non-core task (a driver, the status page) is down.
//! - **fault**: data is being lost or nothing gets through: a core task is down (store
//!   writer, sample feed, model event sink, uplink, command handler), a watched loop is
//!   hung (the systemd watchdog restarts the agent), or the store cannot be written.
//!   `/readyz` fails while a core task is down or the store cannot be written
//!   ([`Health::ready`]).
//!
//! The operator page's OK / DEGRADED / FAULT overview maps `attention` to OK for the
//! gateway and shows the anomaly in the process view.
//!
//! Each reason has a stable machine code ([`ReasonCode`], never renamed: dashboards and
//! alert rules match on it) and an operator sentence that may be reworded.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::live::{Snapshot, TaskState, TaskView};

/// The store counts as nearly full from this share of `store.max_bytes`.
const STORE_NEARLY_FULL: f64 = 0.9;
/// A backlog older than this while the uplink is connected is worth a reason (a replay
/// that cannot keep up, or a broker that refuses publishes).
const BACKLOG_OLD_S: i64 = 600;
/// A task that restarted less than this long ago keeps the verdict degraded, so that a
/// task failing now and then is seen on a page polled every few seconds.
const RECENT_RESTART_S: i64 = 300;

/// How healthy the gateway is, best first. Ordered: the verdict is the maximum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthState {
    #[default]
    Ok,
    Attention,
    Degraded,
    Fault,
}

impl HealthState {
    pub const ALL: [HealthState; 4] = [HealthState::Ok, HealthState::Attention, HealthState::Degraded, HealthState::Fault];

    /// The stable name (`ok`, `attention`, `degraded`, `fault`), as in the JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            HealthState::Ok => "ok",
            HealthState::Attention => "attention",
            HealthState::Degraded => "degraded",
            HealthState::Fault => "fault",
        }
    }
}

/// Why the verdict is not `ok`: the stable machine code of a reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReasonCode {
    /// A task is not running (fault for a core task, degraded for a driver or the page).
    TaskDown,
    /// A task ended unexpectedly and was restarted within the last 5 minutes.
    TaskRestarted,
    /// A task runs but its loop makes no progress: the systemd watchdog is no longer fed,
    /// so systemd restarts the agent.
    TaskHung,
    /// The store cannot be written: readings are held in memory, then dropped.
    StoreUnwritable,
    /// The store holds 90 % or more of `store.max_bytes`: the oldest telemetry goes next.
    StoreNearlyFull,
    /// The uplink is not connected to a broker: everything is buffered.
    UplinkDown,
    /// Connected, but the oldest batch waiting is more than 10 minutes old.
    BacklogOld,
    /// A device is not connected.
    DeviceDisconnected,
    /// A device connected for a whole measurement window was polled at less than 80 % of
    /// its configured rate over it (see `live::poll_rate`).
    DeviceBehind,
    /// A model could not be loaded and is disabled.
    ModelFailed,
    /// An anomaly model reports an anomaly.
    AnomalyActive,
    /// A quality model predicts a value outside its specification.
    QualityDeviation,
    /// A maintenance model says maintenance is due.
    MaintenanceDue,
}

impl ReasonCode {
    pub const ALL: [ReasonCode; 13] = [
        ReasonCode::TaskDown,
        ReasonCode::TaskRestarted,
        ReasonCode::TaskHung,
        ReasonCode::StoreUnwritable,
        ReasonCode::StoreNearlyFull,
        ReasonCode::UplinkDown,
        ReasonCode::BacklogOld,
        ReasonCode::DeviceDisconnected,
        ReasonCode::DeviceBehind,
        ReasonCode::ModelFailed,
        ReasonCode::AnomalyActive,
        ReasonCode::QualityDeviation,
        ReasonCode::MaintenanceDue,
    ];

    /// The stable code, as in the JSON and the `/metrics` label.
    pub fn as_str(self) -> &'static str {
        match self {
            ReasonCode::TaskDown => "task_down",
            ReasonCode::TaskRestarted => "task_restarted",
            ReasonCode::TaskHung => "task_hung",
            ReasonCode::StoreUnwritable => "store_unwritable",
            ReasonCode::StoreNearlyFull => "store_nearly_full",
            ReasonCode::UplinkDown => "uplink_down",
            ReasonCode::BacklogOld => "backlog_old",
            ReasonCode::DeviceDisconnected => "device_disconnected",
            ReasonCode::DeviceBehind => "device_behind",
            ReasonCode::ModelFailed => "model_failed",
            ReasonCode::AnomalyActive => "anomaly_active",
            ReasonCode::QualityDeviation => "quality_deviation",
            ReasonCode::MaintenanceDue => "maintenance_due",
        }
    }
}

/// One reason of the verdict.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Reason {
    pub code: ReasonCode,
    /// The level this reason alone gives the verdict.
    pub level: HealthState,
    /// What it is about: the task, device or model name; `None` for the store and uplink.
    pub subject: Option<String>,
    /// For the operator, in words: "uplink down for 3 min, 1,204 batches buffered, oldest 2 h".
    pub message: String,
}

/// The verdict: the worst level among the reasons, and the reasons, worst first.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Health {
    pub state: HealthState,
    /// False while a core task is down or the store cannot be written (`/readyz` fails).
    pub ready: bool,
    pub reasons: Vec<Reason>,
}

impl Health {
    /// How many reasons carry `code`.
    pub fn count(&self, code: ReasonCode) -> usize {
        self.reasons.iter().filter(|r| r.code == code).count()
    }
}

/// The verdict for snapshot `s` at `now` (the store's writability is its own answer,
/// `store.writable`). Pure: the same inputs give the same verdict.
pub fn evaluate(s: &Snapshot, now: DateTime<Utc>) -> Health {
    let store_writable = s.store.writable;
    let mut reasons = Vec::new();
    tasks(s, now, &mut reasons);
    store(s, &mut reasons);
    uplink(s, now, &mut reasons);
    devices(s, now, &mut reasons);
    models(s, now, &mut reasons);
    // Worst first; the order within a level is the order of the checks above.
    reasons.sort_by_key(|r| std::cmp::Reverse(r.level));
    let state = reasons.iter().map(|r| r.level).max().unwrap_or_default();
    let core_down = s.tasks.values().any(|t| t.core && !t.alive());
    Health { state, ready: !core_down && store_writable, reasons }
}

fn reason(code: ReasonCode, level: HealthState, subject: Option<&str>, message: String) -> Reason {
    Reason { code, level, subject: subject.map(str::to_string), message }
}

fn tasks(s: &Snapshot, now: DateTime<Utc>, out: &mut Vec<Reason>) {
    for (name, t) in &s.tasks {
        let level = if t.core { HealthState::Fault } else { HealthState::Degraded };
        let cause = t.last_exit.as_deref().unwrap_or("no cause known");
        let message = match t.state {
            TaskState::Running | TaskState::Finished => {
                if let Some(silent) = t.hung_for_s {
                    out.push(reason(
                        ReasonCode::TaskHung,
                        HealthState::Fault,
                        Some(name),
                        format!("task {name} makes no progress ({silent} s without a sign of life); systemd restarts the agent"),
                    ));
                }
                if let Some(at) = t.last_exit_at.filter(|at| (now - *at).num_seconds() < RECENT_RESTART_S) {
                    out.push(reason(
                        ReasonCode::TaskRestarted,
                        HealthState::Degraded,
                        Some(name),
                        format!("task {name} restarted {} ago ({}), {}", ago(now, at), cause, restarts(t)),
                    ));
                }
                continue;
            }
            TaskState::Restarting => format!("task {name} is down ({cause}); restarting, {}", restarts(t)),
            TaskState::Failed => format!("task {name} is down ({cause}); the agent is stopping so that systemd restarts it"),
            TaskState::Stopped => format!("task {name} has stopped"),
        };
        out.push(reason(ReasonCode::TaskDown, level, Some(name), message));
    }
}

fn restarts(t: &TaskView) -> String {
    match t.restarts {
        1 => "1 restart so far".to_string(),
        n => format!("{} restarts so far", thousands(n)),
    }
}

fn store(s: &Snapshot, out: &mut Vec<Reason>) {
    let st = &s.store;
    if !st.writable {
        out.push(reason(
            ReasonCode::StoreUnwritable,
            HealthState::Fault,
            None,
            format!(
                "the store cannot be written ({} failed writes so far); new readings are held in memory, then dropped",
                thousands(st.write_errors)
            ),
        ));
    }
    if st.max_bytes > 0 && st.bytes as f64 >= st.max_bytes as f64 * STORE_NEARLY_FULL {
        let pct = (st.bytes as f64 * 100.0 / st.max_bytes as f64).round();
        out.push(reason(
            ReasonCode::StoreNearlyFull,
            HealthState::Degraded,
            None,
            format!(
                "the store is {pct:.0} % full ({} of {}); the oldest telemetry is dropped first",
                bytesize::ByteSize(st.bytes),
                bytesize::ByteSize(st.max_bytes)
            ),
        ));
    }
}

fn uplink(s: &Snapshot, now: DateTime<Utc>, out: &mut Vec<Reason>) {
    let up = &s.uplink;
    let backlog = backlog(s, now);
    if !up.connected {
        let broker = if up.broker.is_empty() { "the broker".to_string() } else { up.broker.clone() };
        let mut message = match (up.connects, up.since) {
            (0, _) | (_, None) => format!("uplink not connected yet to {broker}"),
            (_, Some(since)) => format!("uplink down for {}", ago(now, since)),
        };
        if let Some(e) = &up.last_error {
            message.push_str(&format!(" ({e})"));
        }
        message.push_str(&format!(", {backlog}"));
        out.push(reason(ReasonCode::UplinkDown, HealthState::Degraded, None, message));
    } else if up.oldest_pending_at.is_some_and(|at| (now - at).num_seconds() > BACKLOG_OLD_S) {
        out.push(reason(ReasonCode::BacklogOld, HealthState::Degraded, None, format!("uplink connected, but {backlog} still to send")));
    }
}

/// "1,204 batches buffered, oldest 2 h" / "nothing buffered".
fn backlog(s: &Snapshot, now: DateTime<Utc>) -> String {
    let n = s.store.pending_batches;
    if n == 0 {
        return "nothing buffered".into();
    }
    let batches = if n == 1 { "1 batch".to_string() } else { format!("{} batches", thousands(n)) };
    match s.uplink.oldest_pending_at {
        Some(at) => format!("{batches} buffered, oldest {}", ago(now, at)),
        None => format!("{batches} buffered"),
    }
}

fn devices(s: &Snapshot, now: DateTime<Utc>, out: &mut Vec<Reason>) {
    for (name, d) in &s.devices {
        if d.connected {
            behind(name, d, now, out);
            continue;
        }
        let mut message = match d.since {
            Some(since) => format!("device {name} not connected for {}", ago(now, since)),
            None => format!("device {name} not connected yet"),
        };
        if let Some(e) = &d.last_error {
            message.push_str(&format!(": {e}"));
        }
        out.push(reason(ReasonCode::DeviceDisconnected, HealthState::Degraded, Some(name), message));
    }
}

/// A connected device that fell behind its poll rate. Only when it has been connected for
/// the whole window measured: a reconnect's gap is the disconnection's reason, not this one.
fn behind(name: &str, d: &crate::live::DeviceView, now: DateTime<Utc>, out: &mut Vec<Reason>) {
    let Some(rate) = d.poll_rate.as_ref().filter(|r| r.behind) else { return };
    let Some(achieved) = rate.achieved_per_s else { return };
    if d.since.is_none_or(|since| ((now - since).num_milliseconds() as f64) < rate.window_s * 1000.0) {
        return;
    }
    let pct = if rate.configured_per_s > 0.0 { achieved * 100.0 / rate.configured_per_s } else { 0.0 };
    // Both in the configured rate's unit: a second, or a minute for slower devices.
    let (scale, unit) = if rate.configured_per_s >= 1.0 { (1.0, "second") } else { (60.0, "minute") };
    out.push(reason(
        ReasonCode::DeviceBehind,
        HealthState::Degraded,
        Some(name),
        format!(
            "device {name} polled {} instead of {} times a {unit} ({pct:.0} %) over the last {}; its readings come late",
            trim(achieved * scale),
            trim(rate.configured_per_s * scale),
            secs(rate.window_s)
        ),
    ));
}

/// 2.50 → "2.5", 3.00 → "3", 0.333 → "0.33".
fn trim(v: f64) -> String {
    let s = format!("{v:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// 60 → "1 min", 100 → "100 s".
fn secs(s: f64) -> String {
    let s = s.round() as u64;
    if s % 60 == 0 {
        format!("{} min", s / 60)
    } else {
        format!("{s} s")
    }
}

fn models(s: &Snapshot, now: DateTime<Utc>, out: &mut Vec<Reason>) {
    for (name, m) in &s.models {
        if m.state == "failed" {
            let why = m.error.as_deref().unwrap_or("no reason given");
            out.push(reason(ReasonCode::ModelFailed, HealthState::Degraded, Some(name), format!("model {name} is not loaded: {why}")));
            continue;
        }
        if !m.active {
            continue;
        }
        let since = m.last_event_at.map(|at| format!(" for {}", ago(now, at))).unwrap_or_default();
        let (code, message) = match m.kind.as_str() {
            "quality" => {
                let value = m.last_prediction.as_ref().map(|p| format!(": predicted {:.2}{}", p.value, unit(m))).unwrap_or_default();
                (ReasonCode::QualityDeviation, format!("quality of {} out of specification{since} (model {name}){value}", m.asset))
            }
            "rul" => (ReasonCode::MaintenanceDue, format!("maintenance due on {}{since} (model {name})", m.asset)),
            _ => {
                let tags = m
                    .last_prediction
                    .as_ref()
                    .map(|p| p.contributions.iter().take(3).map(|(t, _)| t.as_str()).collect::<Vec<_>>().join(", "))
                    .filter(|t| !t.is_empty())
                    .map(|t| format!(", mostly {t}"))
                    .unwrap_or_default();
                (ReasonCode::AnomalyActive, format!("anomaly on {}{since} (model {name}{tags})", m.asset))
            }
        };
        out.push(reason(code, HealthState::Attention, Some(name), message));
    }
}

fn unit(m: &crate::analytics::status::ModelView) -> String {
    m.unit.as_deref().map(|u| format!(" {u}")).unwrap_or_default()
}

/// How long ago `at` was, in the largest unit that fits: "45 s", "3 min", "2 h", "4 d".
fn ago(now: DateTime<Utc>, at: DateTime<Utc>) -> String {
    let s = (now - at).num_seconds().max(0);
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min", s / 60),
        3600..86400 => format!("{} h", s / 3600),
        _ => format!("{} d", s / 86400),
    }
}

/// 1204 → "1,204".
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests;
