//! The metrics of each device, as its DBIRTH declares them: name (the tag), alias, datatype
//! and properties (engineering unit, `engLow`/`engHigh`).
//!
//! A Modbus tag's datatype comes from its config (`type`; a scaled value is a `Double`).
//! An OPC-UA tag's type comes from the server, so it is learned from the first value the
//! uplink is about to publish; so is a device the config does not list (the GPIO inputs).
//! When a value does not fit the datatype its device was born with (a metric not yet
//! declared, or one whose type changed), the device is marked for a new DBIRTH, which the
//! uplink publishes before the DDATA that carries the value: every alias in a DDATA
//! resolves to a metric of the last DBIRTH, with the same datatype.

use std::collections::HashMap;

use edge_drivers::modbus::DataType as ModbusType;
use edge_drivers::{DeviceConfig, Protocol, TagConfig, Value};

use super::DataType;

/// Node metric aliases (fixed); device metrics are numbered from [`FIRST_DEVICE_ALIAS`].
/// `Node Control/Rebirth` has none: Sparkplug 3.0 forbids an alias on it
/// (`operational-behavior-data-commands-rebirth-name-aliases`), and `bdSeq` has none either
/// (a host reads it by name, in the NDEATH too). Alias 1 is left unused.
pub const ALIAS_REBOOT: u64 = 2;
pub const ALIAS_VERSION: u64 = 3;
pub const ALIAS_STORE_DEPTH: u64 = 4;
pub const ALIAS_BROKER: u64 = 5;
pub const ALIAS_FAILOVER: u64 = 6;
pub const FIRST_DEVICE_ALIAS: u64 = 100;

/// One metric of a device.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricDef {
    /// The tag name.
    pub name: String,
    /// Unique across the edge node, stable for the life of the process.
    pub alias: u64,
    pub datatype: DataType,
    pub unit: Option<String>,
    /// `clamp_min` / `clamp_max` of the tag: the range its values are held to.
    pub low: Option<f64>,
    pub high: Option<f64>,
    pub description: Option<String>,
}

/// The metrics of one device.
#[derive(Debug, Clone, Default)]
pub struct DeviceMetrics {
    pub metrics: Vec<MetricDef>,
    index: HashMap<String, usize>,
}

impl DeviceMetrics {
    pub fn get(&self, name: &str) -> Option<&MetricDef> {
        self.index.get(name).map(|&i| &self.metrics[i])
    }

    pub fn by_alias(&self, alias: u64) -> Option<&MetricDef> {
        self.metrics.iter().find(|m| m.alias == alias)
    }
}

/// Every device's metrics, in config order (then devices first seen in data).
#[derive(Debug, Clone)]
pub struct Catalog {
    devices: Vec<(String, DeviceMetrics)>,
    next_alias: u64,
}

/// What [`Catalog::observe`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observed {
    pub alias: u64,
    /// The metric is new, or its datatype changed: the device needs a new DBIRTH first.
    pub changed: bool,
}

impl Catalog {
    /// The metrics the config declares (Modbus tags with their types; OPC-UA tags are
    /// learned from their values).
    pub fn from_devices(devices: &[DeviceConfig]) -> Self {
        let mut c = Catalog { devices: Vec::new(), next_alias: FIRST_DEVICE_ALIAS };
        for device in devices {
            let slot = c.device_slot(&device.name);
            for tag in &device.tags {
                if let Some(datatype) = declared_type(device.protocol, tag) {
                    let alias = c.take_alias();
                    let metrics = &mut c.devices[slot].1;
                    metrics.index.insert(tag.name.clone(), metrics.metrics.len());
                    metrics.metrics.push(MetricDef {
                        name: tag.name.clone(),
                        alias,
                        datatype,
                        unit: tag.unit.clone(),
                        low: tag.clamp_min,
                        high: tag.clamp_max,
                        description: tag.description.clone(),
                    });
                }
            }
        }
        c
    }

    fn take_alias(&mut self) -> u64 {
        let a = self.next_alias;
        self.next_alias += 1;
        a
    }

    fn device_slot(&mut self, device: &str) -> usize {
        match self.devices.iter().position(|(d, _)| d == device) {
            Some(i) => i,
            None => {
                self.devices.push((device.to_string(), DeviceMetrics::default()));
                self.devices.len() - 1
            }
        }
    }

    /// The devices, in order.
    pub fn devices(&self) -> impl Iterator<Item = (&str, &DeviceMetrics)> {
        self.devices.iter().map(|(d, m)| (d.as_str(), m))
    }

    pub fn device(&self, device: &str) -> Option<&DeviceMetrics> {
        self.devices.iter().find(|(d, _)| d == device).map(|(_, m)| m)
    }

    /// Makes sure `device`/`tag` has a metric that `value` fits, adding it or changing
    /// its datatype if needed (then `changed`: the device needs a new DBIRTH).
    pub fn observe(&mut self, device: &str, tag: &str, value: Option<&Value>) -> Observed {
        let slot = self.device_slot(device);
        if let Some(&i) = self.devices[slot].1.index.get(tag) {
            let m = &mut self.devices[slot].1.metrics[i];
            return match value {
                Some(v) if !fits(m.datatype, v) => {
                    m.datatype = natural_type(v);
                    Observed { alias: m.alias, changed: true }
                }
                _ => Observed { alias: m.alias, changed: false },
            };
        }
        let alias = self.take_alias();
        // A tag first seen without a value (a bad reading): a number is the best guess; a
        // later value of another kind corrects it with a new DBIRTH.
        let datatype = value.map_or(DataType::Double, natural_type);
        let metrics = &mut self.devices[slot].1;
        metrics.index.insert(tag.to_string(), metrics.metrics.len());
        metrics.metrics.push(MetricDef { name: tag.to_string(), alias, datatype, unit: None, low: None, high: None, description: None });
        Observed { alias, changed: true }
    }
}

/// The datatype a tag's config fixes, if it does (Modbus); `None` for OPC-UA.
pub fn declared_type(protocol: Protocol, tag: &TagConfig) -> Option<DataType> {
    if !protocol.is_modbus() {
        return None;
    }
    let t = tag.data_type();
    let integral_limits = [tag.clamp_min, tag.clamp_max].iter().flatten().all(|l| l.fract() == 0.0);
    Some(match t {
        ModbusType::Bool => DataType::Boolean,
        ModbusType::String => DataType::String,
        // Scaled values are floats (edge_drivers::modbus::decode::scale).
        _ if !tag.is_unscaled() => DataType::Double,
        ModbusType::F32 => DataType::Float,
        ModbusType::F64 => DataType::Double,
        // A fractional clamp limit turns a clamped integer into a float.
        _ if !integral_limits => DataType::Double,
        ModbusType::U16 => DataType::UInt16,
        ModbusType::I16 => DataType::Int16,
        ModbusType::U32 => DataType::UInt32,
        ModbusType::I32 => DataType::Int32,
        ModbusType::U64 => DataType::UInt64,
        ModbusType::I64 => DataType::Int64,
    })
}

/// The datatype a value has when nothing declares one.
pub fn natural_type(v: &Value) -> DataType {
    match v {
        Value::Bool(_) => DataType::Boolean,
        Value::Int(_) => DataType::Int64,
        Value::Float(_) => DataType::Double,
        Value::Text(_) => DataType::String,
    }
}

/// The integer range of an integer datatype.
fn int_range(t: DataType) -> Option<(i128, i128)> {
    Some(match t {
        DataType::Int8 => (i8::MIN.into(), i8::MAX.into()),
        DataType::Int16 => (i16::MIN.into(), i16::MAX.into()),
        DataType::Int32 => (i32::MIN.into(), i32::MAX.into()),
        DataType::Int64 => (i64::MIN.into(), i64::MAX.into()),
        DataType::UInt8 => (0, u8::MAX.into()),
        DataType::UInt16 => (0, u16::MAX.into()),
        DataType::UInt32 => (0, u32::MAX.into()),
        DataType::UInt64 => (0, u64::MAX.into()),
        _ => return None,
    })
}

/// `v` as an integer, if it is one (a float with no fraction counts: a `u64` above the
/// `i64` range arrives as a float).
fn as_integer(v: &Value) -> Option<i128> {
    match v {
        Value::Int(i) => Some(i128::from(*i)),
        Value::Float(f) if f.fract() == 0.0 && f.abs() < 2f64.powi(100) => Some(*f as i128),
        _ => None,
    }
}

/// Whether `v` can be sent as `t` without loss of meaning.
pub fn fits(t: DataType, v: &Value) -> bool {
    if let Some((lo, hi)) = int_range(t) {
        return as_integer(v).is_some_and(|i| (lo..=hi).contains(&i));
    }
    match t {
        DataType::Boolean => matches!(v, Value::Bool(_)),
        DataType::Float | DataType::Double => matches!(v, Value::Int(_) | Value::Float(_)),
        DataType::String | DataType::Text => matches!(v, Value::Text(_)),
        _ => false,
    }
}

/// `v` encoded as `t` (which it [`fits`]); `None` if it does not.
pub fn encode_value(t: DataType, v: &Value) -> Option<srad_types::payload::metric::Value> {
    use srad_types::payload::metric::Value as M;
    if !fits(t, v) {
        return None;
    }
    let float = |v: &Value| match v {
        Value::Int(i) => *i as f64,
        Value::Float(f) => *f,
        _ => 0.0,
    };
    Some(match t {
        // Signed values up to 32 bits travel as their two's complement in `int_value`.
        DataType::Int8 | DataType::Int16 | DataType::Int32 => M::IntValue(as_integer(v)? as i32 as u32),
        DataType::UInt8 | DataType::UInt16 | DataType::UInt32 => M::IntValue(as_integer(v)? as u32),
        DataType::Int64 => M::LongValue(as_integer(v)? as i64 as u64),
        DataType::UInt64 => M::LongValue(as_integer(v)? as u64),
        DataType::Float => M::FloatValue(float(v) as f32),
        DataType::Double => M::DoubleValue(float(v)),
        DataType::Boolean => M::BooleanValue(matches!(v, Value::Bool(true))),
        DataType::String | DataType::Text => match v {
            Value::Text(s) => M::StringValue(s.clone()),
            _ => return None,
        },
        _ => return None,
    })
}

/// A metric value from a host (NCMD, DCMD) as the agent's value, read as `datatype` (the
/// metric's own, else the one it was born with; a signed type sign-extends `int_value`).
/// `None` for a value of another kind (datasets, templates, bytes…).
pub fn decode_value(datatype: Option<DataType>, v: &srad_types::payload::metric::Value) -> Option<Value> {
    use srad_types::payload::metric::Value as M;
    Some(match v {
        M::BooleanValue(b) => Value::Bool(*b),
        M::IntValue(u) => match datatype {
            Some(DataType::Int8 | DataType::Int16 | DataType::Int32) => Value::Int(i64::from(*u as i32)),
            _ => Value::Int(i64::from(*u)),
        },
        M::LongValue(u) => match datatype {
            Some(DataType::UInt64) => i64::try_from(*u).map_or(Value::Float(*u as f64), Value::Int),
            _ => Value::Int(*u as i64),
        },
        M::FloatValue(f) => Value::Float(f64::from(*f)),
        M::DoubleValue(f) => Value::Float(*f),
        M::StringValue(s) => Value::Text(s.clone()),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use edge_drivers::modbus::Table;

    fn modbus(name: &str, t: Option<ModbusType>) -> TagConfig {
        let mut tag: TagConfig = toml::from_str(&format!("name = {name:?}")).unwrap();
        tag.table = Some(Table::Holding);
        tag.address = Some(0);
        tag.data_type = t;
        tag
    }

    #[test]
    fn every_modbus_type_maps_to_its_sparkplug_datatype_and_scaled_values_are_doubles() {
        let cases = [
            (ModbusType::Bool, DataType::Boolean),
            (ModbusType::U16, DataType::UInt16),
            (ModbusType::I16, DataType::Int16),
            (ModbusType::U32, DataType::UInt32),
            (ModbusType::I32, DataType::Int32),
            (ModbusType::U64, DataType::UInt64),
            (ModbusType::I64, DataType::Int64),
            (ModbusType::F32, DataType::Float),
            (ModbusType::F64, DataType::Double),
            (ModbusType::String, DataType::String),
        ];
        for (m, s) in cases {
            assert_eq!(declared_type(Protocol::ModbusTcp, &modbus("t", Some(m))), Some(s), "{m:?}");
        }
        let mut scaled = modbus("t", Some(ModbusType::I16));
        scaled.scale = 0.1;
        assert_eq!(declared_type(Protocol::ModbusTcp, &scaled), Some(DataType::Double));
        let mut clamped = modbus("t", Some(ModbusType::U16));
        clamped.clamp_max = Some(99.5);
        assert_eq!(declared_type(Protocol::ModbusTcp, &clamped), Some(DataType::Double));
        assert_eq!(declared_type(Protocol::Opcua, &modbus("t", None)), None);
    }

    #[test]
    fn values_fit_their_datatype_only_within_its_range() {
        assert!(fits(DataType::UInt16, &Value::Int(65535)));
        assert!(!fits(DataType::UInt16, &Value::Int(-1)));
        assert!(fits(DataType::UInt64, &Value::Float(1.8e19)));
        assert!(!fits(DataType::Int64, &Value::Float(1.8e19)));
        assert!(fits(DataType::Double, &Value::Int(3)));
        assert!(!fits(DataType::Boolean, &Value::Int(1)));
        assert!(!fits(DataType::Double, &Value::Text("x".into())));
        use srad_types::payload::metric::Value as M;
        assert_eq!(encode_value(DataType::Int16, &Value::Int(-2)), Some(M::IntValue(0xFFFF_FFFE)));
        assert_eq!(encode_value(DataType::Int64, &Value::Int(-2)), Some(M::LongValue(u64::MAX - 1)));
        assert_eq!(encode_value(DataType::Float, &Value::Float(0.5)), Some(M::FloatValue(0.5)));
    }

    #[test]
    fn host_values_are_read_by_their_datatype() {
        use srad_types::payload::metric::Value as M;
        assert_eq!(decode_value(Some(DataType::Int16), &M::IntValue(0xFFFF_FFFE)), Some(Value::Int(-2)));
        assert_eq!(decode_value(Some(DataType::UInt32), &M::IntValue(0xFFFF_FFFE)), Some(Value::Int(4_294_967_294)));
        assert_eq!(decode_value(Some(DataType::Int64), &M::LongValue(u64::MAX)), Some(Value::Int(-1)));
        assert_eq!(decode_value(Some(DataType::UInt64), &M::LongValue(u64::MAX)), Some(Value::Float(u64::MAX as f64)));
        assert_eq!(decode_value(None, &M::BooleanValue(true)), Some(Value::Bool(true)));
        assert_eq!(decode_value(None, &M::DoubleValue(2.5)), Some(Value::Float(2.5)));
        assert_eq!(decode_value(None, &M::BytesValue(vec![1])), None);
    }

    #[test]
    fn a_learned_metric_is_added_once_and_a_value_of_another_kind_changes_its_datatype() {
        // Given an OPC-UA device, whose types the config does not declare
        let device: DeviceConfig = toml::from_str(
            "name = \"ua\"\nprotocol = \"opcua\"\n[opcua]\nendpoint = \"opc.tcp://127.0.0.1:4840/\"\n[[tags]]\nname = \"speed\"\nnode_id = \"ns=2;s=S\"",
        )
        .unwrap();
        let mut c = Catalog::from_devices(&[device]);
        assert!(c.device("ua").unwrap().metrics.is_empty());
        // When its first value arrives, then the same kind again, then text
        let first = c.observe("ua", "speed", Some(&Value::Float(1.5)));
        let again = c.observe("ua", "speed", Some(&Value::Int(2)));
        let text = c.observe("ua", "speed", Some(&Value::Text("n/a".into())));
        // Then the metric is born once as a Double, and the text asks for a new birth as a String
        assert!(first.changed);
        assert_eq!(again, Observed { alias: first.alias, changed: false });
        assert!(text.changed);
        assert_eq!(c.device("ua").unwrap().get("speed").unwrap().datatype, DataType::String);
    }
}
