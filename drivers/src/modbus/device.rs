//! The built form of a Modbus device: what the poller, the request planner, the decoder,
//! the deadband and the writer run on.
//!
//! A [`DeviceConfig`] is the config file's shape (flat, with an `Option` for every key a
//! file may leave out). [`ModbusDevice::build`] turns a *validated* one into plain values,
//! resolving every default once, here: the driver never reads a config `Option` to fall
//! back on a default. The defaults themselves are named constants next to the fields they
//! belong to (`crate::config`, `crate::modbus::config`), which the config reference
//! (`edge-agent config-reference`) prints from.
//!
//! An `Option` left in these types means "absent" (no clamp, no deadband, no poll group,
//! no bit), never "use the default".

use std::collections::BTreeMap;
use std::time::Duration;

use crate::config::{
    DeviceConfig, Protocol, TagConfig, DEFAULT_BACKOFF_AFTER_FAILURES, DEFAULT_BACKOFF_MAX, DEFAULT_HEARTBEAT,
    DEFAULT_MAX_BITS_PER_REQUEST, DEFAULT_MAX_REGISTERS_PER_REQUEST,
};
use crate::modbus::transport::Link;
use crate::modbus::types::{ByteOrder, DataType, Table};

pub use crate::config::BuildError;

/// One Modbus device, every default resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct ModbusDevice {
    pub name: String,
    pub protocol: Protocol,
    /// Where the device is and how frames are carried.
    pub link: Link,
    /// Silence kept between two frames: on a serial line only (`inter_frame_delay`, or
    /// 3.5 character times); `None` on TCP, where the converter or the PLC times its line.
    pub frame_gap: Option<Duration>,
    pub unit_id: u8,
    /// 0 or 1: what the tags' configured addresses count from (kept for messages; the
    /// tags carry protocol addresses).
    pub address_base: u8,
    pub poll_interval: Duration,
    /// The named poll groups and their intervals.
    pub poll_groups: BTreeMap<String, Duration>,
    pub timeout: Duration,
    pub max_gap: u16,
    pub max_registers_per_request: u16,
    pub max_bits_per_request: u16,
    pub backoff_after_failures: u32,
    pub backoff_max: Duration,
    pub write_multiple_only: bool,
    pub tags: Vec<ModbusTag>,
}

/// One tag of a Modbus device, every default resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct ModbusTag {
    pub name: String,
    pub table: Table,
    /// The address as configured, counted from the device's `address_base`.
    pub address: u16,
    /// The protocol (0-based) address of the tag's first register or bit.
    pub start: u16,
    /// For a `bool` in a register: the bit. `None`: a coil, a discrete input, or a
    /// whole register.
    pub bit: Option<u8>,
    pub data_type: DataType,
    /// Registers (or bits) the value occupies.
    pub registers: u16,
    pub byte_order: ByteOrder,
    pub byte_swap: bool,
    pub scale: f64,
    pub offset: f64,
    pub clamp_min: Option<f64>,
    pub clamp_max: Option<f64>,
    /// `None`: polled every `poll_interval` of the device.
    pub poll_group: Option<String>,
    pub deadband: Option<f64>,
    pub deadband_percent: Option<f64>,
    /// With a deadband: the longest time without sending a reading.
    pub heartbeat: Duration,
}

impl ModbusDevice {
    /// Builds a validated Modbus device (see the module doc). Fails only on what
    /// validation refuses: a non-Modbus protocol, a missing address, serial line, tag
    /// table or tag address.
    pub fn build(cfg: &DeviceConfig) -> Result<Self, BuildError> {
        let fail = |path: &str, message: String| BuildError { device: cfg.name.clone(), path: path.to_string(), message };
        if !cfg.protocol.is_modbus() {
            return Err(fail("protocol", format!("{} is not a Modbus protocol", cfg.protocol.as_str())));
        }
        let link = Link::of(cfg).map_err(|e| fail("address", e.to_string()))?;
        let frame_gap = match (&cfg.serial, cfg.protocol) {
            (Some(serial), Protocol::ModbusRtu) => Some(serial.frame_gap()),
            _ => None,
        };
        let tags = cfg
            .tags
            .iter()
            .enumerate()
            .map(|(i, t)| ModbusTag::build(t, cfg.address_base).map_err(|(key, message)| fail(&format!("tags[{i}]{key}"), message)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            name: cfg.name.clone(),
            protocol: cfg.protocol,
            link,
            frame_gap,
            unit_id: cfg.unit_id,
            address_base: cfg.address_base,
            poll_interval: cfg.poll_interval,
            poll_groups: cfg.poll_groups.iter().map(|(name, interval)| (name.clone(), interval.0)).collect(),
            timeout: cfg.timeout,
            max_gap: cfg.max_gap,
            max_registers_per_request: cfg.max_registers_per_request.unwrap_or(DEFAULT_MAX_REGISTERS_PER_REQUEST),
            max_bits_per_request: cfg.max_bits_per_request.unwrap_or(DEFAULT_MAX_BITS_PER_REQUEST),
            backoff_after_failures: cfg.backoff_after_failures.unwrap_or(DEFAULT_BACKOFF_AFTER_FAILURES),
            backoff_max: cfg.backoff_max.unwrap_or(DEFAULT_BACKOFF_MAX),
            write_multiple_only: cfg.write_multiple_only,
            tags,
        })
    }

    /// The interval of the poll group `group` (`None`: the device's `poll_interval`).
    pub fn group_interval(&self, group: Option<&str>) -> Duration {
        group.and_then(|g| self.poll_groups.get(g)).copied().unwrap_or(self.poll_interval)
    }
}

impl TryFrom<&DeviceConfig> for ModbusDevice {
    type Error = BuildError;
    fn try_from(cfg: &DeviceConfig) -> Result<Self, BuildError> {
        Self::build(cfg)
    }
}

impl ModbusTag {
    /// Builds one validated tag of a device counting addresses from `address_base`. The
    /// error names the key (`.table`, `.address`, or empty for the tag) and why.
    pub fn build(cfg: &TagConfig, address_base: u8) -> Result<Self, (String, String)> {
        let table = cfg.table.ok_or_else(|| (".table".to_string(), "missing: a Modbus tag needs its register table".to_string()))?;
        let address = cfg.address.ok_or_else(|| (".address".to_string(), "missing: a Modbus tag needs its address".to_string()))?;
        Ok(Self {
            name: cfg.name.clone(),
            table,
            address,
            start: cfg.protocol_address(address_base),
            bit: cfg.bit,
            data_type: cfg.data_type(),
            registers: cfg.register_count(),
            byte_order: cfg.byte_order,
            byte_swap: cfg.byte_swap,
            scale: cfg.scale,
            offset: cfg.offset,
            clamp_min: cfg.clamp_min,
            clamp_max: cfg.clamp_max,
            poll_group: cfg.poll_group.clone(),
            deadband: cfg.deadband,
            deadband_percent: cfg.deadband_percent,
            heartbeat: cfg.heartbeat.unwrap_or(DEFAULT_HEARTBEAT),
        })
    }

    /// Registers (or bits) the tag occupies.
    pub fn register_count(&self) -> u16 {
        self.registers
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

/// Builds every Modbus device of `devices` (the other protocols are left out), grouped by
/// the connection they share, in config order (see [`crate::modbus::group_by_bus`]).
pub fn build_buses(devices: &[DeviceConfig]) -> Result<Vec<Vec<ModbusDevice>>, BuildError> {
    crate::modbus::config::group_by_bus(devices).iter().map(|bus| bus.iter().map(ModbusDevice::build).collect()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Interval;
    use crate::modbus::config::SerialConfig;

    fn tcp(tags: Vec<TagConfig>) -> DeviceConfig {
        DeviceConfig { name: "plc".into(), address: Some("127.0.0.1:502".into()), tags, ..DeviceConfig::default() }
    }

    fn holding(name: &str, address: u16) -> TagConfig {
        TagConfig { name: name.into(), table: Some(Table::Holding), address: Some(address), ..TagConfig::default() }
    }

    #[test]
    fn a_device_that_leaves_every_limit_out_is_built_with_the_documented_defaults() {
        // Given a Modbus TCP device that sets none of the optional limits
        let cfg = tcp(vec![holding("speed", 0)]);

        // When it is built
        let d = ModbusDevice::build(&cfg).unwrap();

        // Then every limit has its documented default, and TCP keeps no frame gap
        assert_eq!(d.max_registers_per_request, 125);
        assert_eq!(d.max_bits_per_request, 2000);
        assert_eq!(d.backoff_after_failures, 3);
        assert_eq!(d.backoff_max, Duration::from_secs(60));
        assert_eq!((d.unit_id, d.address_base, d.max_gap), (1, 0, 8));
        assert_eq!((d.poll_interval, d.timeout), (Duration::from_secs(1), Duration::from_secs(1)));
        assert_eq!(d.frame_gap, None);
        assert_eq!(d.link, Link::Tcp("127.0.0.1:502".parse().unwrap()));
    }

    #[test]
    fn the_defaults_come_from_the_named_constants() {
        // Given a device without limits
        let d = ModbusDevice::build(&tcp(vec![TagConfig { deadband: Some(1.0), ..holding("speed", 0) }])).unwrap();

        // Then the built values are the constants the config reference prints
        assert_eq!(d.max_registers_per_request, DEFAULT_MAX_REGISTERS_PER_REQUEST);
        assert_eq!(d.max_bits_per_request, DEFAULT_MAX_BITS_PER_REQUEST);
        assert_eq!(d.backoff_after_failures, DEFAULT_BACKOFF_AFTER_FAILURES);
        assert_eq!(d.backoff_max, DEFAULT_BACKOFF_MAX);
        assert_eq!(d.tags[0].heartbeat, DEFAULT_HEARTBEAT);
    }

    #[test]
    fn values_set_in_the_config_win_over_the_defaults() {
        // Given a device and a tag that set every optional limit
        let mut cfg = tcp(vec![TagConfig { deadband: Some(1.0), heartbeat: Some(Duration::from_secs(5)), ..holding("speed", 0) }]);
        cfg.max_registers_per_request = Some(10);
        cfg.max_bits_per_request = Some(64);
        cfg.backoff_after_failures = Some(7);
        cfg.backoff_max = Some(Duration::from_secs(9));

        // When it is built
        let d = ModbusDevice::build(&cfg).unwrap();

        // Then the configured values are kept
        assert_eq!((d.max_registers_per_request, d.max_bits_per_request, d.backoff_after_failures), (10, 64, 7));
        assert_eq!(d.backoff_max, Duration::from_secs(9));
        assert_eq!(d.tags[0].heartbeat, Duration::from_secs(5));
    }

    #[test]
    fn a_tag_is_built_with_its_type_width_and_protocol_address_resolved() {
        // Given a one-based device with a coil, a register, an f32 and a string, types left out where they may be
        let mut cfg = tcp(vec![
            TagConfig { table: Some(Table::Coil), ..holding("pump", 5) },
            holding("speed", 1),
            TagConfig { data_type: Some(DataType::F32), ..holding("flow", 2) },
            TagConfig { data_type: Some(DataType::String), length: Some(6), ..holding("batch", 10) },
        ]);
        cfg.address_base = 1;
        cfg.poll_groups.insert("slow".into(), Interval(Duration::from_secs(10)));

        // When it is built
        let d = ModbusDevice::build(&cfg).unwrap();

        // Then a coil is a bool, a register a u16, widths follow the type, addresses are protocol addresses
        let got: Vec<(DataType, u16, u16, u16)> = d.tags.iter().map(|t| (t.data_type, t.registers, t.address, t.start)).collect();
        assert_eq!(got, vec![(DataType::Bool, 1, 5, 4), (DataType::U16, 1, 1, 0), (DataType::F32, 2, 2, 1), (DataType::String, 6, 10, 9)]);
        // And the poll groups keep their intervals
        assert_eq!(d.group_interval(Some("slow")), Duration::from_secs(10));
        assert_eq!(d.group_interval(None), Duration::from_secs(1));
    }

    #[test]
    fn a_serial_device_gets_its_frame_gap_from_the_baud_rate_unless_set() {
        // Given an RTU device at 9600 baud without an inter-frame delay
        let serial = SerialConfig {
            port: "/dev/ttyUSB0".into(),
            baud_rate: 9600,
            parity: crate::modbus::config::Parity::Even,
            data_bits: 8,
            stop_bits: 1,
            inter_frame_delay: None,
        };
        let cfg =
            DeviceConfig { protocol: Protocol::ModbusRtu, address: None, serial: Some(serial.clone()), ..tcp(vec![holding("speed", 0)]) };

        // When it is built, Then the gap is 3.5 characters of 11 bits at 9600 baud
        assert_eq!(ModbusDevice::build(&cfg).unwrap().frame_gap, Some(Duration::from_micros(4010)));

        // And above 19200 baud it is 1.75ms; a configured delay wins
        let fast = DeviceConfig { serial: Some(SerialConfig { baud_rate: 115_200, ..serial.clone() }), ..cfg.clone() };
        assert_eq!(ModbusDevice::build(&fast).unwrap().frame_gap, Some(Duration::from_micros(1750)));
        let set = DeviceConfig { serial: Some(SerialConfig { inter_frame_delay: Some(Duration::from_millis(5)), ..serial }), ..cfg };
        assert_eq!(ModbusDevice::build(&set).unwrap().frame_gap, Some(Duration::from_millis(5)));
    }

    #[test]
    fn an_unvalidated_tag_without_a_table_is_not_built() {
        // Given a tag without its table (validation would have refused it)
        let cfg = tcp(vec![holding("a", 0), TagConfig { table: None, ..holding("b", 1) }]);

        // When it is built, Then the error names the device, the tag and the key
        let e = ModbusDevice::build(&cfg).unwrap_err();
        assert_eq!((e.device.as_str(), e.path.as_str()), ("plc", "tags[1].table"));
    }
}
