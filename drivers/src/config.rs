//! The `[[devices]]` section of the agent config: one PLC and the tags read from it.
//!
//! The drivers own this part of the config because they are what consume it. The agent
//! embeds it, runs [`DeviceConfig::validate`] (and [`validate_devices`] across devices)
//! with the rest of the config, and builds each valid device into the values its driver
//! runs with ([`crate::modbus::ModbusDevice::build`], [`crate::opcua::OpcuaDevice::build`]):
//! a default that a key leaves to the build step is a `DEFAULT_*` constant below (or a
//! serde default next to its field), and is resolved there once; the config reference
//! (`edge-agent config-reference`) prints the same constants.
//!
//! **One shape for every protocol.** A device is one flat table whatever its protocol:
//! the keys every protocol shares (`name`, `protocol`, `poll_interval`, `timeout`,
//! `tags`…) sit at the top, a protocol's own connection settings sit in its own sub-table
//! (`[devices.serial]` for Modbus RTU; an `[devices.opcua]` table for OPC-UA), and a tag
//! carries the address fields of its protocol (`table`/`address` for Modbus). Fields that
//! belong to one protocol are optional in the structs and checked per protocol by
//! `validate()`, so a missing `address` on a Modbus tag or a `table` on another
//! protocol's tag is reported with its path like any other mistake.
//!
//! The structs are plain (no `#[serde(flatten)]`, no internally tagged enums) on purpose:
//! serde buffers those, which hides unknown keys from the unknown-key check of the agent's
//! config loader (serde_ignored).

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::modbus::config::SerialConfig;
use crate::modbus::{ByteOrder, DataType, Table};
use crate::opcua::config::OpcuaConfig;
use crate::validate::Issues;

/// How the agent talks to a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    /// Modbus over TCP (port 502 on most PLCs); `address = "host:port"`.
    ModbusTcp,
    /// Modbus RTU over a serial line (RS-485/RS-232); settings in `[devices.serial]`.
    ModbusRtu,
    /// Modbus RTU frames over a TCP socket, as serial-to-Ethernet converters speak it;
    /// `address = "host:port"` of the converter.
    ModbusRtuOverTcp,
    /// OPC-UA over TCP (`opc.tcp://`); settings in `[devices.opcua]`.
    Opcua,
}

impl Protocol {
    /// The name used in the config and on the status page.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::ModbusTcp => "modbus-tcp",
            Protocol::ModbusRtu => "modbus-rtu",
            Protocol::ModbusRtuOverTcp => "modbus-rtu-over-tcp",
            Protocol::Opcua => "opcua",
        }
    }

    /// Whether the Modbus driver serves this protocol.
    pub fn is_modbus(self) -> bool {
        matches!(self, Protocol::ModbusTcp | Protocol::ModbusRtu | Protocol::ModbusRtuOverTcp)
    }
}

/// One device (PLC, meter, drive) the agent polls.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceConfig {
    /// Unique name; used in MQTT topics (`…/telemetry/{name}`) and on the status page.
    /// Letters, digits, `-` and `_` only.
    pub name: String,
    /// Wire protocol: `modbus-tcp`, `modbus-rtu`, `modbus-rtu-over-tcp` or `opcua`.
    pub protocol: Protocol,
    /// `host:port` of the device (`modbus-tcp`) or of the serial-to-Ethernet converter
    /// (`modbus-rtu-over-tcp`). An IP address: names are not resolved on a plant network.
    #[serde(default)]
    pub address: Option<String>,
    /// `[devices.serial]`: the serial line of a `modbus-rtu` device. Devices on the same
    /// `port` share the bus and are polled in turn.
    #[serde(default)]
    pub serial: Option<SerialConfig>,
    /// `[devices.opcua]`: endpoint, security and subscription settings of an `opcua`
    /// device.
    #[serde(default)]
    pub opcua: Option<OpcuaConfig>,
    /// Modbus unit (slave) id, 0–255 (1–247 on a shared RS-485 bus). Most TCP devices
    /// ignore it; RTU devices and gateways to RS-485 need it.
    #[serde(default = "default_unit_id")]
    pub unit_id: u8,
    /// Whether register addresses in this device's tags start at 0 (protocol addresses,
    /// the default) or at 1 (the "register 1 = address 0" convention of many manuals).
    #[serde(default)]
    pub address_base: u8,
    /// Time between two polls of the tags that name no `poll_group`.
    #[serde(default = "default_poll_interval", with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Named poll groups and their intervals, e.g. `poll_groups = { fast = "100ms",
    /// slow = "10m" }`; a tag joins one with `poll_group = "fast"`.
    #[serde(default)]
    pub poll_groups: BTreeMap<String, Interval>,
    /// Limit on connecting and on each request; past it the connection is rebuilt.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Largest run of unused registers read over to merge two tags into one request.
    #[serde(default = "default_max_gap")]
    pub max_gap: u16,
    /// Most registers one read request may ask for (1–125), for devices that accept
    /// fewer than the protocol's 125. Default [`DEFAULT_MAX_REGISTERS_PER_REQUEST`].
    #[serde(default)]
    pub max_registers_per_request: Option<u16>,
    /// Most coils or discrete inputs one read request may ask for (1–2000). Default
    /// [`DEFAULT_MAX_BITS_PER_REQUEST`].
    #[serde(default)]
    pub max_bits_per_request: Option<u16>,
    /// Consecutive failed polls after which the device is backed off (its circuit
    /// opens: polled again only by a periodic probe), so that it does not hold up the
    /// other devices of its bus. Default [`DEFAULT_BACKOFF_AFTER_FAILURES`].
    #[serde(default)]
    pub backoff_after_failures: Option<u32>,
    /// Longest wait between two probes of a backed-off device (default
    /// [`DEFAULT_BACKOFF_MAX`]); the wait grows from the poll interval, doubling with jitter.
    #[serde(default, with = "humantime_serde")]
    pub backoff_max: Option<Duration>,
    /// Write with function codes 15/16 even for one coil or register, for devices that
    /// do not implement 5/6.
    #[serde(default)]
    pub write_multiple_only: bool,
    /// The tags read from this device.
    #[serde(default)]
    pub tags: Vec<TagConfig>,
}

/// A device config that cannot be built: something validation reports was not caught
/// (the config was not validated). `path` is relative to the device (`tags[3].table`).
/// Shared by every protocol's build step ([`crate::modbus::ModbusDevice::build`],
/// [`crate::opcua::OpcuaDevice::build`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("device {device:?}: {path}: {message}")]
pub struct BuildError {
    pub device: String,
    pub path: String,
    pub message: String,
}

/// `max_registers_per_request` when unset: the protocol's limit.
pub const DEFAULT_MAX_REGISTERS_PER_REQUEST: u16 = 125;
/// `max_bits_per_request` when unset: the protocol's limit.
pub const DEFAULT_MAX_BITS_PER_REQUEST: u16 = 2000;
/// `backoff_after_failures` when unset.
pub const DEFAULT_BACKOFF_AFTER_FAILURES: u32 = 3;
/// `backoff_max` when unset.
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(60);
/// A tag's `heartbeat` when unset (it applies with a deadband only).
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(60);
/// `unit_id` when unset.
pub const DEFAULT_UNIT_ID: u8 = 1;
/// `poll_interval` when unset.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(1);
/// `timeout` when unset.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
/// `max_gap` when unset.
pub const DEFAULT_MAX_GAP: u16 = 8;

/// A duration written like `"500ms"` or `"10m"`, as a map value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Interval(#[serde(with = "humantime_serde")] pub Duration);

/// One value read from a device.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TagConfig {
    /// Unique within the device; the `tag` field of every sample.
    pub name: String,
    /// Modbus: register table, `holding`, `input`, `coil` or `discrete`. Required.
    #[serde(default)]
    pub table: Option<Table>,
    /// Modbus: register (or coil) address, counted from the device's `address_base`.
    /// Required.
    #[serde(default)]
    pub address: Option<u16>,
    /// Modbus: for `type = "bool"` in a holding or input register, the bit (0 = least
    /// significant, 15 = most significant).
    #[serde(default)]
    pub bit: Option<u8>,
    /// Data type: `bool`, `u16`, `i16`, `u32`, `i32`, `u64`, `i64`, `f32`, `f64` or
    /// `string`. Defaults to `bool` for coils and discrete inputs and `u16` for registers.
    #[serde(rename = "type", default)]
    pub data_type: Option<DataType>,
    /// For `type = "string"`: the number of registers (two ASCII characters each).
    #[serde(default)]
    pub length: Option<u16>,
    /// Order of the bytes of a value on the wire, `A` being the most significant:
    /// `ABCD` (big-endian, the default), `CDAB` (word swap), `BADC` (byte swap) or `DCBA`
    /// (little-endian). 16-bit values use the first two letters; 64-bit values extend
    /// the same rule: `ABCD` = `ABCDEFGH`, `CDAB` = `GHEFCDAB` (registers reversed),
    /// `BADC` = `BADCFEHG`, `DCBA` = `HGFEDCBA`.
    #[serde(default)]
    pub byte_order: ByteOrder,
    /// For `type = "string"`: the low byte of each register holds the first character.
    #[serde(default)]
    pub byte_swap: bool,
    /// Engineering value = raw × scale + offset.
    #[serde(default = "one")]
    pub scale: f64,
    #[serde(default)]
    pub offset: f64,
    /// Engineering values below this are reported as this, with quality `uncertain`.
    #[serde(default)]
    pub clamp_min: Option<f64>,
    /// Engineering values above this are reported as this, with quality `uncertain`.
    #[serde(default)]
    pub clamp_max: Option<f64>,
    /// Name of one of the device's `poll_groups`; default: the device's `poll_interval`.
    #[serde(default)]
    pub poll_group: Option<String>,
    /// Send a reading only when it moved by more than this (engineering units) since
    /// the last one sent, or when `heartbeat` has passed.
    #[serde(default)]
    pub deadband: Option<f64>,
    /// Like `deadband`, in percent of the last value sent.
    #[serde(default)]
    pub deadband_percent: Option<f64>,
    /// With a deadband: longest time without sending a reading (default
    /// [`DEFAULT_HEARTBEAT`]), so that a flat value is still seen to be alive.
    #[serde(default, with = "humantime_serde")]
    pub heartbeat: Option<Duration>,
    /// OPC-UA: the node, e.g. `ns=2;s=Line1.Speed` or `ns=2;i=1001`. Or `browse_path`.
    #[serde(default)]
    pub node_id: Option<String>,
    /// OPC-UA: the node by browse names from the Objects folder, e.g.
    /// `/2:Line1/2:Speed`; resolved again on every reconnect (survives a PLC download
    /// that renumbers nodes).
    #[serde(default)]
    pub browse_path: Option<String>,
    /// OPC-UA: how often the server samples this value (default: the device's
    /// `sampling_interval`).
    #[serde(default, with = "humantime_serde")]
    pub sampling_interval: Option<Duration>,
    /// OPC-UA: changes the server queues for this value between publishes.
    #[serde(default)]
    pub queue_size: Option<u32>,
    /// Engineering unit shown on the status page (`t/h`, `°C`, `bar`…).
    #[serde(default)]
    pub unit: Option<String>,
    /// Free text for people.
    #[serde(default)]
    pub description: Option<String>,
}

impl Default for DeviceConfig {
    /// A `modbus-tcp` device with every default and no address or tags: a base for
    /// struct literals.
    fn default() -> Self {
        Self {
            name: String::new(),
            protocol: Protocol::ModbusTcp,
            address: None,
            serial: None,
            opcua: None,
            unit_id: default_unit_id(),
            address_base: 0,
            poll_interval: default_poll_interval(),
            poll_groups: BTreeMap::new(),
            timeout: default_timeout(),
            max_gap: default_max_gap(),
            max_registers_per_request: None,
            max_bits_per_request: None,
            backoff_after_failures: None,
            backoff_max: None,
            write_multiple_only: false,
            tags: Vec::new(),
        }
    }
}

impl Default for TagConfig {
    /// An unnamed `u16` holding register 0, unscaled: a base for struct literals.
    fn default() -> Self {
        Self {
            name: String::new(),
            table: Some(Table::Holding),
            address: Some(0),
            bit: None,
            data_type: None,
            length: None,
            byte_order: ByteOrder::ABCD,
            byte_swap: false,
            scale: 1.0,
            offset: 0.0,
            clamp_min: None,
            clamp_max: None,
            poll_group: None,
            deadband: None,
            deadband_percent: None,
            heartbeat: None,
            node_id: None,
            browse_path: None,
            sampling_interval: None,
            queue_size: None,
            unit: None,
            description: None,
        }
    }
}

fn default_unit_id() -> u8 {
    DEFAULT_UNIT_ID
}
fn default_poll_interval() -> Duration {
    DEFAULT_POLL_INTERVAL
}
fn default_timeout() -> Duration {
    DEFAULT_TIMEOUT
}
fn default_max_gap() -> u16 {
    DEFAULT_MAX_GAP
}
fn one() -> f64 {
    1.0
}

impl TagConfig {
    /// The data type after defaults: `bool` for coils and discrete inputs, `u16` for
    /// registers (the one place this default is decided; validation and the built
    /// `ModbusTag` use it).
    pub fn data_type(&self) -> DataType {
        self.data_type.unwrap_or(match self.table {
            Some(Table::Coil | Table::Discrete) => DataType::Bool,
            _ => DataType::U16,
        })
    }

    /// Whether scale and offset leave the raw value as it is.
    pub fn is_unscaled(&self) -> bool {
        self.scale == 1.0 && self.offset == 0.0
    }

    /// Whether this tag has a deadband (and so is sent only on change or heartbeat).
    pub fn has_deadband(&self) -> bool {
        self.deadband.is_some() || self.deadband_percent.is_some()
    }
}

/// Names travel in MQTT topics and URLs: keep them to a safe alphabet.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 64 && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

impl DeviceConfig {
    /// Where the device is, for people: `host:port`, or the serial port and its settings.
    pub fn endpoint(&self) -> String {
        match (&self.address, &self.serial) {
            (_, Some(serial)) if self.protocol == Protocol::ModbusRtu => serial.describe(),
            (Some(address), _) => address.clone(),
            _ => self.opcua.as_ref().map(|ua| ua.endpoint.clone()).unwrap_or_default(),
        }
    }

    /// The interval of the poll group `group` (`None`: the device's `poll_interval`).
    pub fn group_interval(&self, group: Option<&str>) -> Duration {
        group.and_then(|g| self.poll_groups.get(g)).map_or(self.poll_interval, |i| i.0)
    }

    /// Checks this device, appending every problem under `path` (e.g. `devices[2]`).
    pub fn validate(&self, path: &str, issues: &mut Issues) {
        if !is_valid_name(&self.name) {
            issues.push(format!("{path}.name"), format!("{:?} is not a valid name: use 1–64 letters, digits, '-' or '_'", self.name));
        }
        if self.poll_interval < Duration::from_millis(10) {
            issues.push(format!("{path}.poll_interval"), "must be at least 10ms");
        }
        for (group, interval) in &self.poll_groups {
            if !is_valid_name(group) {
                issues.push(format!("{path}.poll_groups.{group}"), "a group name uses 1–64 letters, digits, '-' or '_'");
            }
            if interval.0 < Duration::from_millis(10) {
                issues.push(format!("{path}.poll_groups.{group}"), "must be at least 10ms");
            }
        }
        if self.timeout.is_zero() {
            issues.push(format!("{path}.timeout"), "must be greater than zero");
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
            tag.validate_common(&tag_path, self, issues);
        }
        if self.protocol.is_modbus() {
            crate::modbus::config::validate_device(self, path, issues);
            crate::opcua::config::reject_on_other_protocol(self, path, issues);
        }
        if self.protocol == Protocol::Opcua {
            crate::opcua::config::validate_device(self, path, issues);
        }
    }
}

/// Checks what concerns several devices at once (devices sharing a serial bus must agree
/// on its settings and use distinct unit ids). `devices` is the whole `[[devices]]` list.
pub fn validate_devices(devices: &[DeviceConfig], issues: &mut Issues) {
    crate::modbus::config::validate_buses(devices, issues);
}

impl TagConfig {
    /// The checks every protocol shares: name, scaling, clamping, deadband, poll group.
    fn validate_common(&self, path: &str, device: &DeviceConfig, issues: &mut Issues) {
        if !is_valid_name(&self.name) {
            issues.push(format!("{path}.name"), format!("{:?} is not a valid name: use 1–64 letters, digits, '-' or '_'", self.name));
        }
        if !self.scale.is_finite() || self.scale == 0.0 {
            issues.push(format!("{path}.scale"), "must be a finite number other than 0");
        }
        if !self.offset.is_finite() {
            issues.push(format!("{path}.offset"), "must be a finite number");
        }
        for (key, value) in [("clamp_min", self.clamp_min), ("clamp_max", self.clamp_max)] {
            if value.is_some_and(|v| !v.is_finite()) {
                issues.push(format!("{path}.{key}"), "must be a finite number");
            }
        }
        if let (Some(lo), Some(hi)) = (self.clamp_min, self.clamp_max) {
            if lo > hi {
                issues.push(format!("{path}.clamp_min"), format!("clamp_min ({lo}) is greater than clamp_max ({hi})"));
            }
        }
        if self.deadband.is_some_and(|d| !d.is_finite() || d < 0.0) {
            issues.push(format!("{path}.deadband"), "must be a finite number, 0 or more");
        }
        if self.deadband_percent.is_some_and(|d| !d.is_finite() || d < 0.0) {
            issues.push(format!("{path}.deadband_percent"), "must be a finite number, 0 or more");
        }
        if self.heartbeat.is_some() && !self.has_deadband() {
            issues.push(format!("{path}.heartbeat"), "only applies with a deadband or deadband_percent");
        }
        if self.heartbeat.is_some_and(|h| h < Duration::from_secs(1)) {
            issues.push(format!("{path}.heartbeat"), "must be at least 1s");
        }
        if let Some(group) = &self.poll_group {
            if !device.poll_groups.contains_key(group) {
                let known: Vec<&str> = device.poll_groups.keys().map(String::as_str).collect();
                issues.push(
                    format!("{path}.poll_group"),
                    format!(
                        "no poll group {group:?} in this device (poll_groups: {})",
                        if known.is_empty() { "none".to_string() } else { known.join(", ") }
                    ),
                );
            }
        }
    }
}
