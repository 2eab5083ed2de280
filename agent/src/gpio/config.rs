//! `[gpio]`: the stack light and relays driven from the agent's state, and digital inputs
//! read as tags (levels and debounced pulse counters).

use std::time::Duration;

use edge_drivers::validate::Issues;
use serde::{Deserialize, Serialize};

/// `[gpio]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpioConfig {
    /// `auto` (the Raspberry Pi's GPIO when the agent runs on one, else simulated),
    /// `rppal` (the Pi's GPIO, refused where there is none) or `simulated` (no hardware: the
    /// levels are shown on the status page only).
    #[serde(default)]
    pub backend: BackendChoice,
    /// Outputs, each driven by one condition of the agent.
    #[serde(default)]
    pub outputs: Vec<OutputConfig>,
    /// Inputs, read as tags of the device `gpio`.
    #[serde(default)]
    pub inputs: Vec<InputConfig>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendChoice {
    #[default]
    Auto,
    Rppal,
    Simulated,
}

/// What an output shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Condition {
    /// Blinks (1 s period) while every core task of the agent is running and none is hung:
    /// a heartbeat of the data path, not merely "the process exists". Steady means dead.
    Running,
    /// The MQTT broker is not connected.
    UplinkDown,
    /// The outbox holds more than `percent` % of `store.max_bytes`.
    BufferAbove,
    /// A model's anomaly (or quality, or maintenance) alarm is active.
    AnomalyActive,
    /// A configured device is not connected.
    DeviceLost,
}

/// An electrical level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    Low,
    High,
}

impl Level {
    pub fn is_high(self) -> bool {
        self == Level::High
    }
    pub fn inverted(self) -> Level {
        match self {
            Level::Low => Level::High,
            Level::High => Level::Low,
        }
    }
}

/// `[[gpio.outputs]]`: one output pin.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputConfig {
    /// BCM GPIO number (as on the Pi's pinout, `GPIO17` = 17).
    pub pin: u8,
    /// The condition the output shows.
    pub when: Condition,
    /// For `buffer_above`: the fill level in percent of `store.max_bytes`.
    #[serde(default)]
    pub percent: Option<f64>,
    /// The level while the condition holds (`low` for the usual active-low relay board).
    #[serde(default = "default_active_level")]
    pub active_level: Level,
    /// The level written when the agent stops (and set before the first state is known).
    /// Default: for `running`, the inactive level (a stopped agent is not running); for the
    /// alarms, the active level (a stopped agent cannot say all is well, so it reads as an
    /// alarm).
    #[serde(default)]
    pub fail_safe_level: Option<Level>,
}

fn default_active_level() -> Level {
    Level::High
}

/// What an input pin is read as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InputKind {
    /// Its level, as a boolean tag (true = high).
    Level,
    /// Debounced rising edges counted, as an integer tag that survives restarts (flow
    /// meters, bag counters).
    Counter,
}

/// The pin's internal resistor.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pull {
    #[default]
    None,
    Up,
    Down,
}

/// `[[gpio.inputs]]`: one input pin.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputConfig {
    /// The tag name (a tag of the device `gpio`).
    pub name: String,
    /// BCM GPIO number.
    pub pin: u8,
    pub kind: InputKind,
    #[serde(default)]
    pub pull: Pull,
    /// A change must hold this long to count (`"20ms"`): contact bounce is ignored.
    #[serde(default = "default_debounce", with = "humantime_serde")]
    pub debounce: Duration,
}

fn default_debounce() -> Duration {
    Duration::from_millis(20)
}

/// The highest BCM number on a Raspberry Pi's header.
pub const MAX_PIN: u8 = 27;

/// `[gpio]` built.
#[derive(Debug, Clone, PartialEq)]
pub struct GpioSettings {
    pub backend: BackendChoice,
    pub outputs: Vec<Output>,
    pub inputs: Vec<Input>,
}

/// An output with every default resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    pub pin: u8,
    pub when: Condition,
    /// For `buffer_above` (0 otherwise).
    pub percent: f64,
    pub active_level: Level,
    pub fail_safe_level: Level,
}

/// An input with every default resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct Input {
    pub name: String,
    pub pin: u8,
    pub kind: InputKind,
    pub pull: Pull,
    pub debounce: Duration,
}

impl GpioConfig {
    /// Appends every problem of this section under `path`.
    pub fn validate(&self, path: &str, issues: &mut Issues) {
        let mut used: Vec<(u8, String)> = Vec::new();
        let mut claim = |pin: u8, at: String, issues: &mut Issues| {
            if pin > MAX_PIN {
                issues.push(format!("{at}.pin"), format!("GPIO{pin} is not on the Raspberry Pi's header (BCM 0–{MAX_PIN})"));
            }
            if let Some((_, other)) = used.iter().find(|(p, _)| *p == pin) {
                issues.push(format!("{at}.pin"), format!("GPIO{pin} is already used by {other}"));
            }
            used.push((pin, at));
        };
        for (i, o) in self.outputs.iter().enumerate() {
            let at = format!("{path}.outputs[{i}]");
            claim(o.pin, at.clone(), issues);
            match (o.when, o.percent) {
                (Condition::BufferAbove, None) => issues.push(format!("{at}.percent"), "buffer_above needs percent (e.g. percent = 80)"),
                (Condition::BufferAbove, Some(p)) if !(0.0..=100.0).contains(&p) => {
                    issues.push(format!("{at}.percent"), format!("{p} is not between 0 and 100"))
                }
                (Condition::BufferAbove, Some(_)) => {}
                (_, Some(_)) => issues.push(format!("{at}.percent"), "percent applies only to when = \"buffer_above\""),
                (_, None) => {}
            }
        }
        let mut names: Vec<&str> = Vec::new();
        for (i, input) in self.inputs.iter().enumerate() {
            let at = format!("{path}.inputs[{i}]");
            claim(input.pin, at.clone(), issues);
            if input.name.trim().is_empty() {
                issues.push(format!("{at}.name"), "must not be empty");
            } else if names.contains(&input.name.as_str()) {
                issues.push(format!("{at}.name"), format!("{:?} is used by another input", input.name));
            }
            names.push(&input.name);
            if input.debounce > Duration::from_secs(10) {
                issues.push(format!("{at}.debounce"), "more than 10 s: a pulse would never count");
            }
        }
    }

    /// The runtime settings, every default resolved.
    pub fn build(&self) -> GpioSettings {
        GpioSettings {
            backend: self.backend,
            outputs: self
                .outputs
                .iter()
                .map(|o| Output {
                    pin: o.pin,
                    when: o.when,
                    percent: o.percent.unwrap_or(0.0),
                    active_level: o.active_level,
                    fail_safe_level: o.fail_safe_level.unwrap_or(match o.when {
                        Condition::Running => o.active_level.inverted(),
                        _ => o.active_level,
                    }),
                })
                .collect(),
            inputs: self
                .inputs
                .iter()
                .map(|i| Input { name: i.name.clone(), pin: i.pin, kind: i.kind, pull: i.pull, debounce: i.debounce })
                .collect(),
        }
    }
}

impl GpioSettings {
    pub fn is_empty(&self) -> bool {
        self.outputs.is_empty() && self.inputs.is_empty()
    }
}
