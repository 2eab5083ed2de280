//! The `[[devices]]` section of the agent config: one PLC and the tags read from it.
//!
//! The drivers own this part of the config because they are what consume it. The agent
//! embeds it, runs [`DeviceConfig::validate`] with the rest of the config, and hands
//! each valid device to its driver.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::modbus::{ByteOrder, DataType, Table};
use crate::validate::Issues;

/// How the agent talks to a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    /// Modbus over TCP (port 502 on most PLCs).
    ModbusTcp,
}

/// One device (PLC, meter, drive) the agent polls.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceConfig {
    /// Unique name; used in MQTT topics (`…/telemetry/{name}`) and on the status page.
    /// Letters, digits, `-` and `_` only.
    pub name: String,
    /// Wire protocol. Only `modbus-tcp` exists so far.
    pub protocol: Protocol,
    /// `host:port` of the device (an IP address; names are not resolved on a plant network).
    pub address: String,
    /// Modbus unit (slave) id, 0–255. Most TCP devices ignore it; gateways to RS-485 need it.
    #[serde(default = "default_unit_id")]
    pub unit_id: u8,
    /// Whether register addresses in this device's tags start at 0 (protocol addresses,
    /// the default) or at 1 (the "register 1 = address 0" convention of many manuals).
    #[serde(default)]
    pub address_base: u8,
    /// Time between two polls of the whole device.
    #[serde(default = "default_poll_interval", with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Limit on connecting and on each request; past it the connection is rebuilt.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Largest run of unused registers read over to merge two tags into one request.
    #[serde(default = "default_max_gap")]
    pub max_gap: u16,
    /// The tags read from this device.
    #[serde(default)]
    pub tags: Vec<TagConfig>,
}

/// One value read from a device.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TagConfig {
    /// Unique within the device; the `tag` field of every sample.
    pub name: String,
    /// Register table: `holding`, `input`, `coil` or `discrete`.
    pub table: Table,
    /// Register (or coil) address, counted from the device's `address_base`.
    pub address: u16,
    /// Data type: `bool`, `u16`, `i16`, `u32`, `i32` or `f32`. Defaults to `bool` for coils
    /// and discrete inputs and `u16` for registers.
    #[serde(rename = "type", default)]
    pub data_type: Option<DataType>,
    /// Order of the bytes of a value on the wire, `A` being the most significant:
    /// `ABCD` (big-endian, the default), `CDAB` (word swap), `BADC` (byte swap) or `DCBA`.
    /// 16-bit values use the first two letters (`AB` or `BA`).
    #[serde(default)]
    pub byte_order: ByteOrder,
    /// Engineering value = raw × scale + offset.
    #[serde(default = "one")]
    pub scale: f64,
    #[serde(default)]
    pub offset: f64,
    /// Engineering unit shown on the status page (`t/h`, `°C`, `bar`…).
    #[serde(default)]
    pub unit: Option<String>,
    /// Free text for people.
    #[serde(default)]
    pub description: Option<String>,
}

fn default_unit_id() -> u8 {
    1
}
fn default_poll_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_timeout() -> Duration {
    Duration::from_secs(1)
}
fn default_max_gap() -> u16 {
    8
}
fn one() -> f64 {
    1.0
}

impl TagConfig {
    /// The data type after defaults.
    pub fn data_type(&self) -> DataType {
        self.data_type.unwrap_or(match self.table {
            Table::Coil | Table::Discrete => DataType::Bool,
            Table::Holding | Table::Input => DataType::U16,
        })
    }

    /// Whether scale and offset leave the raw value as it is.
    pub fn is_unscaled(&self) -> bool {
        self.scale == 1.0 && self.offset == 0.0
    }
}

/// Names travel in MQTT topics and URLs: keep them to a safe alphabet.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

impl DeviceConfig {
    /// Checks this device, appending every problem under `path` (e.g. `devices[2]`).
    pub fn validate(&self, path: &str, issues: &mut Issues) {
        if !is_valid_name(&self.name) {
            issues.push(
                format!("{path}.name"),
                format!("{:?} is not a valid name: use 1–64 letters, digits, '-' or '_'", self.name),
            );
        }
        if self.address.parse::<SocketAddr>().is_err() {
            issues.push(
                format!("{path}.address"),
                format!("{:?} is not an IP address and port, e.g. \"192.168.1.10:502\"", self.address),
            );
        }
        if self.address_base > 1 {
            issues.push(format!("{path}.address_base"), "expected 0 or 1");
        }
        if self.poll_interval < Duration::from_millis(10) {
            issues.push(format!("{path}.poll_interval"), "must be at least 10ms");
        }
        if self.timeout.is_zero() {
            issues.push(format!("{path}.timeout"), "must be greater than zero");
        }
        if self.max_gap > 100 {
            issues.push(format!("{path}.max_gap"), "must be at most 100 registers");
        }
        if self.tags.is_empty() {
            issues.push(format!("{path}.tags"), "a device needs at least one tag");
        }
        let mut names = HashSet::new();
        for (i, tag) in self.tags.iter().enumerate() {
            let tag_path = format!("{path}.tags[{i}]");
            if !names.insert(tag.name.as_str()) {
                issues.push(format!("{tag_path}.name"), format!("duplicate tag name {:?} in this device", tag.name));
            }
            tag.validate(&tag_path, self.address_base, issues);
        }
    }
}

impl TagConfig {
    fn validate(&self, path: &str, address_base: u8, issues: &mut Issues) {
        if !is_valid_name(&self.name) {
            issues.push(
                format!("{path}.name"),
                format!("{:?} is not a valid name: use 1–64 letters, digits, '-' or '_'", self.name),
            );
        }
        if address_base == 1 && self.address == 0 {
            issues.push(format!("{path}.address"), "is 0 but the device counts addresses from 1");
        }
        let data_type = self.data_type();
        let bit_table = matches!(self.table, Table::Coil | Table::Discrete);
        if bit_table && data_type != DataType::Bool {
            issues.push(
                format!("{path}.type"),
                format!("{} tables hold single bits: the type must be bool, not {}", self.table.as_str(), data_type.as_str()),
            );
        }
        if !bit_table && data_type == DataType::Bool {
            issues.push(
                format!("{path}.type"),
                "bool is for coil and discrete tables; read a register as u16 instead",
            );
        }
        let last = u32::from(self.address) + u32::from(data_type.register_count()) - 1;
        if last > u32::from(u16::MAX) {
            issues.push(format!("{path}.address"), format!("the value runs past the last register (65535): it ends at {last}"));
        }
        if !self.scale.is_finite() || self.scale == 0.0 {
            issues.push(format!("{path}.scale"), "must be a finite number other than 0");
        }
        if !self.offset.is_finite() {
            issues.push(format!("{path}.offset"), "must be a finite number");
        }
        if data_type == DataType::Bool && !self.is_unscaled() {
            issues.push(format!("{path}.scale"), "a bool cannot be scaled");
        }
    }
}
