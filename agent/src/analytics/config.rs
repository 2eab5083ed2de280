//! `[[models]]` and `[calendar]`: the local models the gateway runs, and the production
//! calendar the maintenance scheduler plans in.
//!
//! ```toml
//! [[models]]
//! name = "juice-pump-anomaly"
//! kind = "anomaly"
//! artifact = "embedded:juice-pump-anomaly"     # or a directory with manifest.json
//! asset = "juice-pump"
//! inputs = ["mill-plc/juice_pump_suction_pressure", "mill-plc/juice_pump_current"]
//! row_interval = "1m"
//! min_duration = "3m"
//!
//! [calendar]
//! horizon = "28d"
//! [[calendar.shifts]]
//! name = "day"
//! start = "06:00"
//! duration = "8h"
//! crew = 4
//! [[calendar.planned_stops]]
//! name = "weekly cleaning"
//! start = "2026-11-29T06:00:00Z"
//! duration = "12h"
//! every = "7d"
//! ```

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, NaiveTime, Utc};
use edge_drivers::config::is_valid_name;
use edge_drivers::validate::Issues;
use edge_drivers::DeviceConfig;
pub use edge_models::ModelKind;
use serde::{Deserialize, Serialize};

/// Prefix of `artifact` naming an artifact compiled into the binary.
pub const EMBEDDED_PREFIX: &str = "embedded:";
/// Name of the virtual device whose telemetry carries the models' predictions.
pub const ANALYTICS_DEVICE: &str = "analytics";

/// `[[models]]`: one model, the tags it reads and what it raises.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// Unique name: in the events (`details.model`), the telemetry of the `analytics`
    /// device (`{name}_score`, `{name}_value`…), the status page and `/metrics`.
    pub name: String,
    /// `anomaly`, `quality` or `rul`; must match the artifact's manifest.
    pub kind: ModelKind,
    /// The artifact: a directory holding `manifest.json` and `weights.safetensors`, or
    /// `embedded:NAME` for one shipped in the binary (`embedded:juice-pump-anomaly`,
    /// `embedded:syrup-purity`, `embedded:mill-bearing-rul`).
    pub artifact: String,
    /// The asset the events name (`asset` of the event); default: the model's name.
    #[serde(default)]
    pub asset: Option<String>,
    /// Input tags as `device/tag`, in the order of the manifest's `inputs` (each tag's
    /// name must be the manifest's input name).
    pub inputs: Vec<String>,
    /// Rows per inference. Optional; when set it must equal the manifest's `window`.
    #[serde(default)]
    pub window: Option<usize>,
    /// How often a row is taken from the latest readings: the sample period the model was
    /// trained at. A row is taken only when every input has a good reading younger than
    /// three row intervals (at least 2 s); otherwise the window starts again.
    #[serde(default = "default_row_interval", with = "humantime_serde")]
    pub row_interval: Duration,
    /// How often the model runs once its window is full; default and minimum: every row.
    #[serde(default, with = "humantime_serde")]
    pub period: Option<Duration>,
    /// How long a condition must hold before its event is raised, and before it is
    /// cleared (anomaly, quality deviation, maintenance due). `"0s"`: one inference.
    #[serde(default, with = "humantime_serde")]
    pub min_duration: Duration,
    /// Anomaly: the score (1.0 = the calibrated threshold) that starts an anomaly.
    #[serde(default = "default_on")]
    pub score_on: f32,
    /// Anomaly: the score below which it ends (hysteresis); at most `score_on`.
    #[serde(default = "default_off")]
    pub score_off: f32,
    /// Anomaly: how many contributing tags the events name.
    #[serde(default = "default_top_tags")]
    pub top_tags: usize,
    /// Quality: lowest value within specification.
    #[serde(default)]
    pub spec_min: Option<f64>,
    /// Quality: highest value within specification.
    #[serde(default)]
    pub spec_max: Option<f64>,
    /// Quality: also raise a deviation when the uncertainty band (not only the value)
    /// leaves the specification.
    #[serde(default)]
    pub band_outside_spec: bool,
    /// Quality: a deviation is restored only when the value is back inside the limits by
    /// this much (hysteresis, in the value's unit).
    #[serde(default)]
    pub hysteresis: f64,
    /// Quality: the tag (`device/tag`) where the lab enters its results; each new value
    /// corrects the prediction's bias. Lab values can also come over MQTT (`cmd/lab`).
    #[serde(default)]
    pub lab_tag: Option<String>,
    /// Quality: how much of the gap between a lab value and the prediction goes into the
    /// bias (`bias += lab_gain × (lab − prediction − bias)`); 1 trusts each lab value fully,
    /// less smooths out the lab's own scatter. 0 < lab_gain ≤ 1.
    #[serde(default = "default_lab_gain")]
    pub lab_gain: f64,
    /// RUL: how long the maintenance takes.
    #[serde(default = "default_maintenance_duration", with = "humantime_serde")]
    pub maintenance_duration: Duration,
    /// RUL: fitters the maintenance needs for its whole duration.
    #[serde(default = "default_crew")]
    pub crew: u32,
    /// RUL: `maintenance_due` is raised when the 10 % point of the RUL band is closer
    /// than this.
    #[serde(default = "default_notify_within", with = "humantime_serde")]
    pub notify_within: Duration,
    /// RUL: highest acceptable probability of a failure before the proposed window.
    #[serde(default = "default_max_risk")]
    pub max_risk: f64,
    /// Rows the window starts with (`edge-agent demo` only; not a config key: see
    /// [`super::warmup`]).
    #[serde(skip)]
    pub warm_up: Option<super::warmup::WarmUp>,
}

fn default_row_interval() -> Duration {
    Duration::from_secs(60)
}
fn default_on() -> f32 {
    1.0
}
fn default_off() -> f32 {
    0.8
}
fn default_top_tags() -> usize {
    3
}
fn default_lab_gain() -> f64 {
    0.3
}
fn default_maintenance_duration() -> Duration {
    Duration::from_secs(8 * 3600)
}
fn default_crew() -> u32 {
    2
}
fn default_notify_within() -> Duration {
    Duration::from_secs(14 * 86_400)
}
fn default_max_risk() -> f64 {
    0.1
}

/// `[calendar]`: when production runs, when it stops, who is there.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CalendarConfig {
    /// How far ahead maintenance windows are proposed.
    #[serde(default = "default_horizon", with = "humantime_serde")]
    pub horizon: Duration,
    /// Shifts, each with its maintenance crew (`[[calendar.shifts]]`). None: the crew is
    /// not limited.
    #[serde(default)]
    pub shifts: Vec<ShiftConfig>,
    /// Planned production stops (`[[calendar.planned_stops]]`).
    #[serde(default)]
    pub planned_stops: Vec<PlannedStopConfig>,
}

fn default_horizon() -> Duration {
    Duration::from_secs(28 * 86_400)
}

impl Default for CalendarConfig {
    fn default() -> Self {
        Self { horizon: default_horizon(), shifts: Vec::new(), planned_stops: Vec::new() }
    }
}

/// `[[calendar.shifts]]`: a shift that repeats on given weekdays (times in UTC).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShiftConfig {
    pub name: String,
    /// Start time of day, `HH:MM`, UTC.
    pub start: String,
    /// Length; a shift may run past midnight. At most 24h.
    #[serde(with = "humantime_serde")]
    pub duration: Duration,
    /// Maintenance people on this shift.
    pub crew: u32,
    /// Weekdays it starts on (`mon` … `sun`); default: every day.
    #[serde(default)]
    pub days: Option<Vec<String>>,
}

/// `[[calendar.planned_stops]]`: a planned production stop, once or repeating.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlannedStopConfig {
    pub name: String,
    /// When it (first) starts, RFC 3339 (`2026-11-29T06:00:00Z`).
    pub start: DateTime<Utc>,
    #[serde(with = "humantime_serde")]
    pub duration: Duration,
    /// Repeats every this long (e.g. `"7d"`); default: once.
    #[serde(default, with = "humantime_serde")]
    pub every: Option<Duration>,
    /// Maintenance people on site during the stop; default: the shifts' crews.
    #[serde(default)]
    pub crew: Option<u32>,
}

pub const WEEKDAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// `HH:MM` → time of day.
pub fn parse_time_of_day(s: &str) -> Option<NaiveTime> {
    NaiveTime::parse_from_str(s, "%H:%M").ok()
}

impl ModelConfig {
    /// The asset its events name.
    pub fn asset(&self) -> &str {
        self.asset.as_deref().unwrap_or(&self.name)
    }

    /// How often it runs.
    pub fn period(&self) -> Duration {
        self.period.unwrap_or(self.row_interval).max(self.row_interval)
    }

    fn validate(&self, path: &str, devices: &[DeviceConfig], issues: &mut Issues) {
        if !is_valid_name(&self.name) || self.name.len() > 56 {
            issues.push(
                format!("{path}.name"),
                format!(
                    "{:?} is not a valid model name: use 1–56 letters, digits, '-' or '_' (its telemetry tags add a suffix such as _upper)",
                    self.name
                ),
            );
        }
        if let Some(asset) = &self.asset {
            if !is_valid_name(asset) {
                issues.push(format!("{path}.asset"), format!("{asset:?} is not a valid name: use 1–64 letters, digits, '-' or '_'"));
            }
        }
        match self.artifact.strip_prefix(EMBEDDED_PREFIX) {
            Some(name) if !crate::analytics::embedded::NAMES.contains(&name) => issues.push(
                format!("{path}.artifact"),
                format!("no embedded artifact {name:?}: the binary ships {}", crate::analytics::embedded::NAMES.join(", ")),
            ),
            None if self.artifact.trim().is_empty() => issues.push(format!("{path}.artifact"), "must not be empty"),
            _ => {}
        }
        if self.inputs.is_empty() {
            issues.push(format!("{path}.inputs"), "needs at least one input tag");
        }
        let mut seen = HashSet::new();
        for (i, input) in self.inputs.iter().enumerate() {
            check_tag_ref(&format!("{path}.inputs[{i}]"), input, devices, issues);
            if !seen.insert(input.as_str()) {
                issues.push(format!("{path}.inputs[{i}]"), format!("{input} is listed twice"));
            }
        }
        if self.window == Some(0) {
            issues.push(format!("{path}.window"), "must be at least 1");
        }
        if self.row_interval < Duration::from_millis(10) || self.row_interval > Duration::from_secs(86_400) {
            issues.push(format!("{path}.row_interval"), "must be between 10ms and 1d");
        }
        if let Some(p) = self.period {
            if p < self.row_interval {
                issues.push(format!("{path}.period"), "must not be shorter than row_interval (a model runs at most once per row)");
            }
        }
        if self.min_duration > Duration::from_secs(7 * 86_400) {
            issues.push(format!("{path}.min_duration"), "must be at most 7d");
        }
        let only = |key: &str, set: bool, kind: &str, issues: &mut Issues| {
            if set {
                issues.push(format!("{path}.{key}"), format!("only for kind = \"{kind}\""));
            }
        };
        match self.kind {
            ModelKind::Anomaly => {
                if !(self.score_on.is_finite() && self.score_on > 0.0) {
                    issues.push(format!("{path}.score_on"), "must be a number greater than 0");
                }
                if !(self.score_off.is_finite() && self.score_off >= 0.0 && self.score_off <= self.score_on) {
                    issues.push(format!("{path}.score_off"), format!("must be between 0 and score_on ({})", self.score_on));
                }
                if self.top_tags == 0 {
                    issues.push(format!("{path}.top_tags"), "must be at least 1");
                }
            }
            ModelKind::Quality => {
                if self.spec_min.is_none() && self.spec_max.is_none() {
                    issues.push(format!("{path}.spec_min"), "a quality model needs spec_min, spec_max or both");
                }
                for (key, v) in [("spec_min", self.spec_min), ("spec_max", self.spec_max)] {
                    if v.is_some_and(|v| !v.is_finite()) {
                        issues.push(format!("{path}.{key}"), "must be a finite number");
                    }
                }
                if let (Some(lo), Some(hi)) = (self.spec_min, self.spec_max) {
                    if lo >= hi {
                        issues.push(format!("{path}.spec_min"), format!("spec_min ({lo}) must be below spec_max ({hi})"));
                    }
                }
                if !(self.hysteresis.is_finite() && self.hysteresis >= 0.0) {
                    issues.push(format!("{path}.hysteresis"), "must be 0 or more");
                }
                if !(self.lab_gain > 0.0 && self.lab_gain <= 1.0) {
                    issues.push(format!("{path}.lab_gain"), "must be greater than 0 and at most 1");
                }
                if let Some(lab) = &self.lab_tag {
                    check_tag_ref(&format!("{path}.lab_tag"), lab, devices, issues);
                }
            }
            ModelKind::Rul => {
                if self.maintenance_duration < Duration::from_secs(60) || self.maintenance_duration > Duration::from_secs(30 * 86_400) {
                    issues.push(format!("{path}.maintenance_duration"), "must be between 1m and 30d");
                }
                if self.crew == 0 || self.crew > 1000 {
                    issues.push(format!("{path}.crew"), "must be between 1 and 1000");
                }
                if !(self.max_risk > 0.0 && self.max_risk < 1.0) {
                    issues.push(format!("{path}.max_risk"), "must be between 0 and 1 (exclusive)");
                }
                if self.notify_within < Duration::from_secs(60) {
                    issues.push(format!("{path}.notify_within"), "must be at least 1m");
                }
            }
        }
        if self.kind != ModelKind::Anomaly {
            only("score_on", self.score_on != default_on(), "anomaly", issues);
            only("score_off", self.score_off != default_off(), "anomaly", issues);
            only("top_tags", self.top_tags != default_top_tags(), "anomaly", issues);
        }
        if self.kind != ModelKind::Quality {
            only("spec_min", self.spec_min.is_some(), "quality", issues);
            only("spec_max", self.spec_max.is_some(), "quality", issues);
            only("band_outside_spec", self.band_outside_spec, "quality", issues);
            only("hysteresis", self.hysteresis != 0.0, "quality", issues);
            only("lab_tag", self.lab_tag.is_some(), "quality", issues);
            only("lab_gain", self.lab_gain != default_lab_gain(), "quality", issues);
        }
        if self.kind != ModelKind::Rul {
            only("maintenance_duration", self.maintenance_duration != default_maintenance_duration(), "rul", issues);
            only("crew", self.crew != default_crew(), "rul", issues);
            only("notify_within", self.notify_within != default_notify_within(), "rul", issues);
            only("max_risk", self.max_risk != default_max_risk(), "rul", issues);
        }
    }
}

/// Checks a `device/tag` reference against `[[devices]]`.
fn check_tag_ref(path: &str, value: &str, devices: &[DeviceConfig], issues: &mut Issues) {
    let Some((device, tag)) = value.split_once('/') else {
        issues.push(path, format!("{value:?}: write the tag as device/tag"));
        return;
    };
    let Some(d) = devices.iter().find(|d| d.name == device) else {
        issues.push(path, format!("no device named {device:?} in [[devices]]"));
        return;
    };
    if !d.tags.iter().any(|t| t.name == tag) {
        issues.push(path, format!("device {device:?} has no tag named {tag:?}"));
    }
}

/// Checks `[[models]]` (names unique, not clashing with a device called `analytics`).
pub fn validate_models(models: &[ModelConfig], devices: &[DeviceConfig], issues: &mut Issues) {
    let mut names = HashSet::new();
    for (i, m) in models.iter().enumerate() {
        let path = format!("models[{i}]");
        if !names.insert(m.name.as_str()) {
            issues.push(format!("{path}.name"), format!("duplicate model name {:?}", m.name));
        }
        m.validate(&path, devices, issues);
    }
    if !models.is_empty() && devices.iter().any(|d| d.name == ANALYTICS_DEVICE) {
        issues.push(
            "devices",
            format!("a device is named {ANALYTICS_DEVICE:?}, the virtual device that carries the models' predictions; rename it"),
        );
    }
}

impl CalendarConfig {
    pub fn validate(&self, path: &str, issues: &mut Issues) {
        if self.horizon < Duration::from_secs(3600) || self.horizon > Duration::from_secs(366 * 86_400) {
            issues.push(format!("{path}.horizon"), "must be between 1h and 366d");
        }
        for (i, s) in self.shifts.iter().enumerate() {
            let p = format!("{path}.shifts[{i}]");
            if s.name.trim().is_empty() {
                issues.push(format!("{p}.name"), "must not be empty");
            }
            if parse_time_of_day(&s.start).is_none() {
                issues.push(format!("{p}.start"), format!("{:?} is not a time of day: write HH:MM (UTC), e.g. \"06:00\"", s.start));
            }
            if s.duration < Duration::from_secs(60) || s.duration > Duration::from_secs(86_400) {
                issues.push(format!("{p}.duration"), "must be between 1m and 24h");
            }
            if s.crew > 1000 {
                issues.push(format!("{p}.crew"), "must be at most 1000");
            }
            for (j, day) in s.days.iter().flatten().enumerate() {
                if !WEEKDAYS.contains(&day.as_str()) {
                    issues.push(format!("{p}.days[{j}]"), format!("{day:?}: expected one of {}", WEEKDAYS.join(", ")));
                }
            }
        }
        for (i, s) in self.planned_stops.iter().enumerate() {
            let p = format!("{path}.planned_stops[{i}]");
            if s.name.trim().is_empty() {
                issues.push(format!("{p}.name"), "must not be empty");
            }
            if s.duration < Duration::from_secs(60) || s.duration > Duration::from_secs(366 * 86_400) {
                issues.push(format!("{p}.duration"), "must be between 1m and 366d");
            }
            if let Some(every) = s.every {
                if every < s.duration.max(Duration::from_secs(3600)) {
                    issues.push(format!("{p}.every"), "must be at least 1h and at least the stop's duration");
                }
            }
            if s.crew.is_some_and(|c| c > 1000) {
                issues.push(format!("{p}.crew"), "must be at most 1000");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::load_str;

    const BASE: &str = r#"
[gateway]
id = "gw"
site = "site"
data_dir = "/tmp/x"

[[devices]]
name = "plc"
protocol = "modbus-tcp"
address = "127.0.0.1:502"

[[devices.tags]]
name = "a"
table = "holding"
address = 0

[[devices.tags]]
name = "b"
table = "holding"
address = 1
"#;

    fn problems(extra: &str) -> Vec<String> {
        match load_str(&format!("{BASE}{extra}"), "t.toml") {
            Ok(_) => vec![],
            Err(e) => e.problems.into_iter().map(|p| format!("{}: {}", p.path, p.message)).collect(),
        }
    }

    #[test]
    fn a_full_models_and_calendar_section_loads() {
        let p = problems(
            r#"
[[models]]
name = "pump"
kind = "anomaly"
artifact = "embedded:juice-pump-anomaly"
inputs = ["plc/a", "plc/b"]
row_interval = "1m"
min_duration = "3m"

[[models]]
name = "purity"
kind = "quality"
artifact = "/var/lib/edge-agent/models/purity"
inputs = ["plc/a"]
spec_min = 85.0
lab_tag = "plc/b"

[[models]]
name = "bearing"
kind = "rul"
artifact = "models/bearing"
inputs = ["plc/a"]
maintenance_duration = "8h"
crew = 3

[calendar]
horizon = "14d"
[[calendar.shifts]]
name = "day"
start = "06:00"
duration = "8h"
crew = 4
days = ["mon", "tue"]
[[calendar.planned_stops]]
name = "sunday"
start = "2026-11-29T06:00:00Z"
duration = "12h"
every = "7d"
"#,
        );
        assert_eq!(p, Vec::<String>::new());
    }

    #[test]
    fn every_problem_of_the_models_and_calendar_is_reported_with_its_path() {
        let p = problems(
            r#"
[[models]]
name = "pump"
kind = "anomaly"
artifact = "embedded:nope"
inputs = ["plc/a", "plc/zzz", "other/a", "bare"]
score_off = 2.0
spec_min = 1.0
colour = "red"

[[models]]
name = "pump"
kind = "quality"
artifact = "dir"
inputs = ["plc/a"]
row_interval = "1m"
period = "10s"

[calendar]
[[calendar.shifts]]
name = "day"
start = "6 am"
duration = "30h"
crew = 2
days = ["monday"]
"#,
        );
        let expect = [
            "models[0].artifact: no embedded artifact \"nope\"",
            "models[0].inputs[1]: device \"plc\" has no tag named \"zzz\"",
            "models[0].inputs[2]: no device named \"other\"",
            "models[0].inputs[3]: \"bare\": write the tag as device/tag",
            "models[0].score_off: must be between 0 and score_on",
            "models[0].spec_min: only for kind = \"quality\"",
            "models[0].colour: unknown key",
            "models[1].name: duplicate model name \"pump\"",
            "models[1].period: must not be shorter than row_interval",
            "models[1].spec_min: a quality model needs spec_min, spec_max or both",
            "calendar.shifts[0].start: \"6 am\" is not a time of day",
            "calendar.shifts[0].duration: must be between 1m and 24h",
            "calendar.shifts[0].days[0]: \"monday\": expected one of mon",
        ];
        for e in expect {
            assert!(p.iter().any(|x| x.starts_with(e)), "missing {e:?} in {p:#?}");
        }
        assert_eq!(p.len(), expect.len(), "{p:#?}");
    }

    #[test]
    fn a_device_named_analytics_clashes_with_the_virtual_device_when_models_run() {
        let text = format!("{BASE}\n[[models]]\nname = \"m\"\nkind = \"rul\"\nartifact = \"d\"\ninputs = [\"analytics/a\"]\n")
            .replace("name = \"plc\"", "name = \"analytics\"");
        let err = load_str(&text, "t.toml").unwrap_err();
        assert!(err.problems.iter().any(|p| p.path == "devices" && p.message.contains("virtual device")), "{err}");
    }
}
