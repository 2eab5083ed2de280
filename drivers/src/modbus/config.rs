//! The Modbus part of the device config: the serial line of RTU devices, and the checks
//! that only make sense for Modbus (addresses, tables, types, bus sharing).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{DeviceConfig, Protocol, TagConfig};
use crate::modbus::types::{DataType, Table};
use crate::validate::Issues;

/// `[devices.serial]`: an RS-485 / RS-232 line for `protocol = "modbus-rtu"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SerialConfig {
    /// The serial device, e.g. `/dev/ttyUSB0` or `/dev/ttyAMA0`.
    pub port: String,
    /// Bits per second: 1200 … 115200 (9600 and 19200 are the usual ones).
    #[serde(default = "default_baud_rate")]
    pub baud_rate: u32,
    /// `none`, `even` (the Modbus default) or `odd`.
    #[serde(default)]
    pub parity: Parity,
    /// 7 or 8 (Modbus RTU uses 8).
    #[serde(default = "default_data_bits")]
    pub data_bits: u8,
    /// 1 or 2 (Modbus asks for 2 when there is no parity; many devices use 1).
    #[serde(default = "default_stop_bits")]
    pub stop_bits: u8,
    /// Silence kept between two frames on the bus. Default: 3.5 character times at the
    /// baud rate, and 1.75ms above 19200 baud, as the Modbus serial line spec says.
    #[serde(default, with = "humantime_serde")]
    pub inter_frame_delay: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Parity {
    None,
    #[default]
    Even,
    Odd,
}

fn default_baud_rate() -> u32 {
    19_200
}
fn default_data_bits() -> u8 {
    8
}
fn default_stop_bits() -> u8 {
    1
}

impl SerialConfig {
    /// `/dev/ttyUSB0 19200 8E1`, as on a device's nameplate.
    pub fn describe(&self) -> String {
        let parity = match self.parity {
            Parity::None => 'N',
            Parity::Even => 'E',
            Parity::Odd => 'O',
        };
        format!("{} {} {}{}{}", self.port, self.baud_rate, self.data_bits, parity, self.stop_bits)
    }

    /// The silence between two frames (see `inter_frame_delay`): the one place its default
    /// is decided, used when the device is built (`ModbusDevice::frame_gap`).
    pub fn frame_gap(&self) -> Duration {
        self.inter_frame_delay.unwrap_or_else(|| {
            if self.baud_rate > 19_200 {
                Duration::from_micros(1750)
            } else {
                // 11 bits per character, 3.5 characters.
                Duration::from_micros(38_500_000 / u64::from(self.baud_rate.max(1)))
            }
        })
    }
}

impl TagConfig {
    /// Registers (or bits) the tag occupies on a Modbus device.
    pub fn register_count(&self) -> u16 {
        match self.data_type() {
            DataType::String => self.length.unwrap_or(1).max(1),
            DataType::Bool if self.bit.is_some() => 1,
            other => other.register_count(),
        }
    }

    /// The protocol (0-based) address of the tag's first register on a device counting
    /// from `address_base`.
    pub fn protocol_address(&self, address_base: u8) -> u16 {
        self.address.unwrap_or(0).saturating_sub(u16::from(address_base))
    }
}

/// The key of the connection a device is reached over: devices with the same key share
/// one connection and are polled in turn.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BusKey {
    /// A Modbus TCP device has a connection of its own (keyed by its name).
    Tcp(String),
    /// RTU frames over TCP to one converter.
    RtuOverTcp(String),
    /// One serial port.
    Serial(String),
}

/// Which connection `device` uses.
pub fn bus_key(device: &DeviceConfig) -> BusKey {
    match device.protocol {
        Protocol::ModbusTcp => BusKey::Tcp(device.name.clone()),
        Protocol::ModbusRtuOverTcp => BusKey::RtuOverTcp(device.address.clone().unwrap_or_default()),
        Protocol::ModbusRtu => BusKey::Serial(device.serial.as_ref().map(|s| s.port.clone()).unwrap_or_default()),
        // Not a Modbus device: never grouped (callers filter on is_modbus()).
        Protocol::Opcua => BusKey::Tcp(device.name.clone()),
    }
}

/// Groups Modbus devices by the connection they share, in config order.
pub fn group_by_bus(devices: &[DeviceConfig]) -> Vec<Vec<DeviceConfig>> {
    let mut order: Vec<BusKey> = Vec::new();
    let mut groups: HashMap<BusKey, Vec<DeviceConfig>> = HashMap::new();
    for d in devices.iter().filter(|d| d.protocol.is_modbus()) {
        let key = bus_key(d);
        if !groups.contains_key(&key) {
            order.push(key.clone());
        }
        groups.entry(key).or_default().push(d.clone());
    }
    order.into_iter().filter_map(|k| groups.remove(&k)).collect()
}

/// The Modbus checks of one device (the shared ones are in [`DeviceConfig::validate`]).
pub(crate) fn validate_device(device: &DeviceConfig, path: &str, issues: &mut Issues) {
    match device.protocol {
        Protocol::ModbusTcp | Protocol::ModbusRtuOverTcp => {
            match &device.address {
                None => issues.push(
                    format!("{path}.address"),
                    format!("is required for {}: \"host:port\", e.g. \"192.168.1.10:502\"", device.protocol.as_str()),
                ),
                Some(a) if a.parse::<SocketAddr>().is_err() => {
                    issues.push(format!("{path}.address"), format!("{a:?} is not an IP address and port, e.g. \"192.168.1.10:502\""))
                }
                Some(_) => {}
            }
            if device.serial.is_some() {
                issues.push(format!("{path}.serial"), format!("only applies to modbus-rtu, not {}", device.protocol.as_str()));
            }
        }
        Protocol::ModbusRtu => {
            if device.address.is_some() {
                issues.push(format!("{path}.address"), "a modbus-rtu device is on a serial port: set [devices.serial] port instead");
            }
            match &device.serial {
                None => issues
                    .push(format!("{path}.serial"), "is required for modbus-rtu: [devices.serial] with at least port = \"/dev/ttyUSB0\""),
                Some(s) => validate_serial(s, &format!("{path}.serial"), issues),
            }
        }
        Protocol::Opcua => {}
    }
    if device.protocol != Protocol::ModbusTcp && !(1..=247).contains(&device.unit_id) {
        issues.push(format!("{path}.unit_id"), "must be 1–247 on a serial bus (0 is broadcast, 248–255 are reserved)");
    }
    if device.address_base > 1 {
        issues.push(format!("{path}.address_base"), "expected 0 or 1");
    }
    if device.max_gap > 100 {
        issues.push(format!("{path}.max_gap"), "must be at most 100 registers");
    }
    if device.max_registers_per_request.is_some_and(|n| !(1..=125).contains(&n)) {
        issues.push(format!("{path}.max_registers_per_request"), "must be 1–125");
    }
    if device.max_bits_per_request.is_some_and(|n| !(1..=2000).contains(&n)) {
        issues.push(format!("{path}.max_bits_per_request"), "must be 1–2000");
    }
    if device.backoff_after_failures == Some(0) {
        issues.push(format!("{path}.backoff_after_failures"), "must be at least 1");
    }
    if device.backoff_max.is_some_and(|d| d < Duration::from_secs(1)) {
        issues.push(format!("{path}.backoff_max"), "must be at least 1s");
    }
    let max_regs = device.max_registers_per_request.unwrap_or(crate::config::DEFAULT_MAX_REGISTERS_PER_REQUEST);
    for (i, tag) in device.tags.iter().enumerate() {
        validate_tag(tag, &format!("{path}.tags[{i}]"), device.address_base, max_regs, issues);
    }
}

fn validate_serial(s: &SerialConfig, path: &str, issues: &mut Issues) {
    if s.port.trim().is_empty() {
        issues.push(format!("{path}.port"), "must name the serial device, e.g. \"/dev/ttyUSB0\"");
    }
    if !(300..=921_600).contains(&s.baud_rate) {
        issues.push(format!("{path}.baud_rate"), "must be 300–921600");
    }
    if !(7..=8).contains(&s.data_bits) {
        issues.push(format!("{path}.data_bits"), "expected 7 or 8");
    }
    if !(1..=2).contains(&s.stop_bits) {
        issues.push(format!("{path}.stop_bits"), "expected 1 or 2");
    }
    if s.inter_frame_delay.is_some_and(|d| d > Duration::from_secs(1)) {
        issues.push(format!("{path}.inter_frame_delay"), "must be at most 1s");
    }
}

fn validate_tag(tag: &TagConfig, path: &str, address_base: u8, max_regs: u16, issues: &mut Issues) {
    let (Some(table), Some(address)) = (tag.table, tag.address) else {
        // Worded like serde's own message for a missing key, which users know.
        for (key, missing) in [("table", tag.table.is_none()), ("address", tag.address.is_none())] {
            if missing {
                issues.push(path, format!("missing field `{key}`: a Modbus tag needs its table and register address"));
            }
        }
        return;
    };
    if address_base == 1 && address == 0 {
        issues.push(format!("{path}.address"), "is 0 but the device counts addresses from 1");
    }
    let data_type = tag.data_type();
    let bit_table = matches!(table, Table::Coil | Table::Discrete);
    if bit_table && data_type != DataType::Bool {
        issues.push(
            format!("{path}.type"),
            format!("{} tables hold single bits: the type must be bool, not {}", table.as_str(), data_type.as_str()),
        );
    }
    if !bit_table && data_type == DataType::Bool && tag.bit.is_none() {
        issues.push(format!("{path}.type"), "bool in a register needs `bit` (0–15); or read the register as u16");
    }
    match tag.bit {
        Some(_) if bit_table || data_type != DataType::Bool => {
            issues.push(format!("{path}.bit"), "only applies to type = \"bool\" in a holding or input register")
        }
        Some(b) if b > 15 => issues.push(format!("{path}.bit"), "must be 0–15"),
        _ => {}
    }
    match (data_type, tag.length) {
        (DataType::String, None) => issues.push(format!("{path}.length"), "is required for a string: the number of registers"),
        (DataType::String, Some(n)) if n == 0 || n > max_regs => {
            issues.push(format!("{path}.length"), format!("must be 1–{max_regs} registers"))
        }
        (DataType::String, _) => {}
        (_, Some(_)) => issues.push(format!("{path}.length"), "only applies to type = \"string\""),
        _ => {}
    }
    if tag.byte_swap && data_type != DataType::String {
        issues.push(format!("{path}.byte_swap"), "only applies to type = \"string\"; numbers use byte_order");
    }
    let last = u32::from(address.saturating_sub(u16::from(address_base))) + u32::from(tag.register_count()) - 1;
    if last > u32::from(u16::MAX) {
        issues.push(format!("{path}.address"), format!("the value runs past the last register (65535): it ends at {last}"));
    }
    if !data_type.is_numeric() {
        if !tag.is_unscaled() {
            issues.push(format!("{path}.scale"), format!("a {} cannot be scaled", data_type.as_str()));
        }
        for (key, set) in [
            ("clamp_min", tag.clamp_min.is_some()),
            ("clamp_max", tag.clamp_max.is_some()),
            ("deadband", tag.deadband.is_some()),
            ("deadband_percent", tag.deadband_percent.is_some()),
        ] {
            if set {
                issues.push(format!("{path}.{key}"), format!("only applies to numbers, not {}", data_type.as_str()));
            }
        }
    }
}

/// Devices sharing one serial port must agree on its settings and have distinct unit ids;
/// so must devices sharing one RTU-over-TCP converter.
pub(crate) fn validate_buses(devices: &[DeviceConfig], issues: &mut Issues) {
    let mut first_on_bus: HashMap<BusKey, usize> = HashMap::new();
    let mut units: HashMap<(BusKey, u8), usize> = HashMap::new();
    for (i, d) in devices.iter().enumerate().filter(|(_, d)| d.protocol.is_modbus()) {
        let key = bus_key(d);
        if matches!(key, BusKey::Tcp(_)) {
            continue;
        }
        match first_on_bus.get(&key) {
            None => {
                first_on_bus.insert(key.clone(), i);
            }
            Some(&first) => {
                let f = &devices[first];
                if d.serial != f.serial && d.protocol == Protocol::ModbusRtu {
                    issues.push(
                        format!("devices[{i}].serial"),
                        format!(
                            "shares port {:?} with device {:?} but its settings differ: one bus has one baud rate, parity and framing",
                            d.serial.as_ref().map(|s| s.port.as_str()).unwrap_or(""),
                            f.name
                        ),
                    );
                }
            }
        }
        if let Some(&other) = units.get(&(key.clone(), d.unit_id)) {
            issues.push(
                format!("devices[{i}].unit_id"),
                format!("unit id {} is already used by device {:?} on the same bus", d.unit_id, devices[other].name),
            );
        } else {
            units.insert((key, d.unit_id), i);
        }
    }
}
