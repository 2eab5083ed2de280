//! `[commands]`: what the ERP may ask of this gateway over MQTT (`…/cmd/{name}`).
//!
//! `ping`, `reload` and `rebirth` are always answered. Writes to the PLCs are off unless
//! `writes_enabled = true`, and even then only to the tags listed in `[[commands.writable]]`,
//! each with the range a write must stay in and, optionally, the largest change one write
//! may make.
//!
//! ```toml
//! [commands]
//! writes_enabled = true
//!
//! [[commands.writable]]
//! device = "mill-plc"
//! tag = "mill_speed_setpoint"
//! min = 0.0
//! max = 120.0
//! max_step = 5.0
//! ```

use std::collections::HashSet;
use std::time::Duration;

use edge_drivers::modbus::Table;
use edge_drivers::validate::Issues;
use edge_drivers::DeviceConfig;
use serde::{Deserialize, Serialize};

/// `[commands]`: commands from the ERP.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CommandsConfig {
    /// Whether `cmd/write` may write to PLCs at all. Off by default: a gateway only reads
    /// until someone decides otherwise.
    #[serde(default)]
    pub writes_enabled: bool,
    /// How long a write may take, from the moment the command is handled to the device's
    /// answer: waiting for the poll in progress, then the write itself (which the driver
    /// also bounds by the device's `timeout`). 100ms–60s.
    #[serde(default = "default_write_timeout", with = "humantime_serde")]
    pub write_timeout: Duration,
    /// The tags that may be written (`[[commands.writable]]`). A tag not listed here is
    /// never written.
    #[serde(default)]
    pub writable: Vec<WritableTag>,
}

/// `[[commands.writable]]`: one tag the ERP may write, and the limits of a write.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WritableTag {
    /// Name of a device in `[[devices]]`.
    pub device: String,
    /// Name of one of that device's tags; it must be a holding register or a coil.
    pub tag: String,
    /// Smallest value a write may set, in engineering units. Required for registers; not
    /// allowed for coils (they take `true`/`false`).
    #[serde(default)]
    pub min: Option<f64>,
    /// Largest value a write may set, in engineering units. Required for registers; not
    /// allowed for coils.
    #[serde(default)]
    pub max: Option<f64>,
    /// Largest change one write may make from the tag's last good reading, in engineering
    /// units. When set, a write is refused while the tag has no good reading yet.
    /// Optional; registers only; greater than 0.
    #[serde(default)]
    pub max_step: Option<f64>,
}

fn default_write_timeout() -> Duration {
    Duration::from_secs(5)
}

impl Default for CommandsConfig {
    fn default() -> Self {
        Self { writes_enabled: false, write_timeout: default_write_timeout(), writable: Vec::new() }
    }
}

impl CommandsConfig {
    /// The allowlist entry for `device`/`tag`, if there is one.
    pub fn writable(&self, device: &str, tag: &str) -> Option<&WritableTag> {
        self.writable.iter().find(|w| w.device == device && w.tag == tag)
    }

    /// Appends every problem of this section under `path`. `devices` is the `[[devices]]`
    /// section the allowlist refers to.
    pub fn validate(&self, path: &str, devices: &[DeviceConfig], issues: &mut Issues) {
        if self.write_timeout < Duration::from_millis(100) || self.write_timeout > Duration::from_secs(60) {
            issues.push(format!("{path}.write_timeout"), "must be between 100ms and 60s");
        }
        let mut seen = HashSet::new();
        for (i, entry) in self.writable.iter().enumerate() {
            let entry_path = format!("{path}.writable[{i}]");
            if !seen.insert((entry.device.as_str(), entry.tag.as_str())) {
                issues.push(
                    format!("{entry_path}.tag"),
                    format!("{}/{} is listed more than once; keep one entry per tag", entry.device, entry.tag),
                );
            }
            entry.validate(&entry_path, devices, issues);
        }
    }
}

impl WritableTag {
    fn validate(&self, path: &str, devices: &[DeviceConfig], issues: &mut Issues) {
        for (key, value) in [("min", self.min), ("max", self.max), ("max_step", self.max_step)] {
            if value.is_some_and(|v| !v.is_finite()) {
                issues.push(format!("{path}.{key}"), "must be a finite number");
            }
        }
        if let (Some(min), Some(max)) = (self.min, self.max) {
            if min > max {
                issues.push(format!("{path}.min"), format!("min ({min}) is greater than max ({max})"));
            }
        }
        if let Some(step) = self.max_step {
            if step <= 0.0 {
                issues.push(format!("{path}.max_step"), format!("must be greater than 0, not {step}"));
            }
        }

        let Some(device) = devices.iter().find(|d| d.name == self.device) else {
            let known: Vec<&str> = devices.iter().map(|d| d.name.as_str()).collect();
            issues.push(format!("{path}.device"), format!("no device named {:?} in [[devices]] (devices: {})", self.device, list(&known)));
            return;
        };
        let Some(tag) = device.tags.iter().find(|t| t.name == self.tag) else {
            issues.push(format!("{path}.tag"), format!("device {:?} has no tag named {:?}", self.device, self.tag));
            return;
        };
        if device.protocol == edge_drivers::Protocol::Opcua {
            // The node's type is the server's: min and max, when given, limit numbers
            // (and a number without both is refused at write time).
            return;
        }
        let Some(table) = tag.table else {
            issues.push(
                format!("{path}.tag"),
                format!("{}/{} is not a Modbus register or coil: only those can be written", self.device, self.tag),
            );
            return;
        };
        let is_bool = tag.data_type() == edge_drivers::modbus::DataType::Bool;
        match table {
            Table::Input | Table::Discrete => issues.push(
                format!("{path}.tag"),
                format!(
                    "{}/{} is in the {} table, which is read-only: only holding registers and coils can be written",
                    self.device,
                    self.tag,
                    table.as_str()
                ),
            ),
            Table::Coil | Table::Holding if is_bool || table == Table::Coil => {
                for (key, value) in [("min", self.min), ("max", self.max), ("max_step", self.max_step)] {
                    if value.is_some() {
                        issues.push(
                            format!("{path}.{key}"),
                            format!("{}/{} is a coil (true/false): {key} does not apply", self.device, self.tag),
                        );
                    }
                }
            }
            Table::Coil | Table::Holding => {
                for (key, value) in [("min", self.min), ("max", self.max)] {
                    if value.is_none() {
                        issues.push(
                            format!("{path}.{key}"),
                            format!("is required: {}/{} is a register, and every register write needs limits", self.device, self.tag),
                        );
                    }
                }
            }
        }
    }
}

fn list(names: &[&str]) -> String {
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edge_drivers::modbus::{ByteOrder, DataType};
    use edge_drivers::{Protocol, TagConfig};

    fn devices() -> Vec<DeviceConfig> {
        let tag = |name: &str, table, data_type| TagConfig {
            name: name.into(),
            table: Some(table),
            address: Some(0),
            data_type: Some(data_type),
            byte_order: ByteOrder::ABCD,
            scale: 1.0,
            offset: 0.0,
            unit: None,
            description: None,
            ..TagConfig::default()
        };
        vec![DeviceConfig {
            name: "plc".into(),
            protocol: Protocol::ModbusTcp,
            address: Some("127.0.0.1:502".into()),
            unit_id: 1,
            address_base: 0,
            poll_interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            max_gap: 8,
            tags: vec![
                tag("speed", Table::Holding, DataType::U16),
                tag("pump", Table::Coil, DataType::Bool),
                tag("level", Table::Input, DataType::U16),
                tag("trip", Table::Discrete, DataType::Bool),
            ],
            ..DeviceConfig::default()
        }]
    }

    fn entry(device: &str, tag: &str, min: Option<f64>, max: Option<f64>, max_step: Option<f64>) -> WritableTag {
        WritableTag { device: device.into(), tag: tag.into(), min, max, max_step }
    }

    fn problems(config: &CommandsConfig) -> Vec<(String, String)> {
        let mut issues = Issues::default();
        config.validate("commands", &devices(), &mut issues);
        issues.0.into_iter().map(|i| (i.path, i.message)).collect()
    }

    #[test]
    fn the_default_is_read_only_and_valid() {
        let c = CommandsConfig::default();
        assert!(!c.writes_enabled);
        assert!(problems(&c).is_empty());
    }

    #[test]
    fn a_good_allowlist_passes() {
        let c = CommandsConfig {
            writes_enabled: true,
            writable: vec![entry("plc", "speed", Some(0.0), Some(100.0), Some(5.0)), entry("plc", "pump", None, None, None)],
            ..Default::default()
        };
        assert_eq!(problems(&c), vec![]);
        assert!(c.writable("plc", "speed").is_some());
        assert!(c.writable("plc", "level").is_none());
    }

    #[test]
    fn the_loader_points_at_the_line_of_each_problem() {
        let text = r#"[gateway]
id = "gw"
site = "site"
data_dir = "/tmp/gw"

[[devices]]
name = "plc"
protocol = "modbus-tcp"
address = "127.0.0.1:502"

[[devices.tags]]
name = "speed"
table = "holding"
address = 0

[commands]
writes_enabled = true
write_timout = "1s"

[[commands.writable]]
device = "plc"
tag = "sped"
min = 0.0
max = 1.0

[[commands.writable]]
device = "plc"
tag = "speed"
max = 1.0
"#;
        let err = crate::config::load_str(text, "plant.toml").expect_err("refused");
        let got: Vec<(Option<usize>, &str)> = err.problems.iter().map(|p| (p.line, p.path.as_str())).collect();
        assert_eq!(
            got,
            vec![(Some(18), "commands.write_timout"), (Some(22), "commands.writable[0].tag"), (Some(26), "commands.writable[1].min")],
            "{err}"
        );
        let defaults = crate::config::load_str(&text[..text.find("[commands]").unwrap()], "plant.toml").expect("valid without [commands]");
        assert!(!defaults.commands.writes_enabled);
        assert_eq!(defaults.commands.write_timeout, Duration::from_secs(5));
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let c = CommandsConfig {
            writes_enabled: true,
            write_timeout: Duration::from_millis(10),
            writable: vec![
                entry("nope", "speed", Some(0.0), Some(1.0), None),
                entry("plc", "nope", Some(0.0), Some(1.0), None),
                entry("plc", "level", Some(0.0), Some(1.0), None),
                entry("plc", "speed", Some(5.0), Some(1.0), Some(0.0)),
                entry("plc", "speed", None, Some(f64::NAN), Some(-1.0)),
                entry("plc", "pump", Some(0.0), None, None),
                entry("plc", "trip", None, None, None),
            ],
        };
        let got = problems(&c);
        let has = |path: &str, needle: &str| {
            assert!(got.iter().any(|(p, m)| p == path && m.contains(needle)), "no {path}: …{needle}… in {got:#?}");
        };
        has("commands.write_timeout", "between 100ms and 60s");
        has("commands.writable[0].device", "no device named \"nope\"");
        has("commands.writable[1].tag", "has no tag named \"nope\"");
        has("commands.writable[2].tag", "read-only");
        has("commands.writable[3].min", "greater than max");
        has("commands.writable[3].max_step", "greater than 0");
        has("commands.writable[4].tag", "more than once");
        has("commands.writable[4].min", "is required");
        has("commands.writable[4].max", "finite");
        has("commands.writable[4].max_step", "greater than 0");
        has("commands.writable[5].min", "is a coil");
        has("commands.writable[6].tag", "read-only");
        assert_eq!(got.len(), 12, "{got:#?}");
    }
}
