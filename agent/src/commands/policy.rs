//! Whether a parsed write may go to the PLC: pure, unit-tested.
//!
//! Checked in this order, the first failure being the reason given:
//! 1. writes are enabled (`commands.writes_enabled`);
//! 2. the device/tag is in the allowlist (`[[commands.writable]]`);
//! 3. the value has the tag's type (`true`/`false` for a coil, a number for a register);
//! 4. it lies in `[min, max]`;
//! 5. it can be represented in the tag's type after inverse scaling (Modbus; an OPC-UA
//!    node's type is only known to the server, so the driver checks it before sending);
//! 6. it is at most `max_step` away from the tag's last good reading.

use edge_drivers::modbus::write::encode_write;
use edge_drivers::modbus::{DataType, ModbusTag, Table};
use edge_drivers::{DeviceConfig, Value};

use super::config::CommandsConfig;
use super::parse::WriteCommand;

/// Relative slack for comparisons in engineering units, which carry binary noise from
/// scaling (`313.4 − 308.4 = 5.000000000000057`).
const SLACK: f64 = 1e-9;

/// Checks `write` against the config. `last_good` is the tag's last good reading, if any.
/// Returns the reason when the write is refused.
pub fn check_write(
    commands: &CommandsConfig,
    devices: &[DeviceConfig],
    last_good: Option<&Value>,
    write: &WriteCommand,
) -> Result<(), String> {
    let target = format!("{}/{}", write.device, write.tag);
    if !commands.writes_enabled {
        return Err("writes are disabled on this gateway (commands.writes_enabled = false)".into());
    }
    let Some(entry) = commands.writable(&write.device, &write.tag) else {
        return Err(format!("{target} is not writable: it is not in the allowlist (commands.writable)"));
    };
    // Validation guarantees an allowlisted tag exists; stay total anyway.
    let Some((device, tag)) =
        devices.iter().find(|d| d.name == write.device).and_then(|d| d.tags.iter().find(|t| t.name == write.tag).map(|t| (d, t)))
    else {
        return Err(format!("{target} is not a configured tag"));
    };
    let opcua = device.protocol == edge_drivers::Protocol::Opcua;
    // A Modbus tag as the driver runs it (its type resolved); `None` for OPC-UA.
    let modbus = match opcua {
        true => None,
        false => Some(ModbusTag::build(tag, device.address_base).map_err(|_| format!("{target} is not a configured tag"))?),
    };
    let is_bool = modbus.as_ref().is_some_and(|t| t.table == Table::Coil || t.data_type == DataType::Bool);
    let number = match (is_bool, &write.value) {
        // An OPC-UA node's type is the server's: the driver converts to it (or refuses);
        // numbers still need the allowlist's limits.
        _ if opcua => match &write.value {
            Value::Int(i) => Some(*i as f64),
            Value::Float(f) => Some(*f),
            Value::Bool(_) | Value::Text(_) => None,
        },
        (true, Value::Bool(_)) => None,
        (true, other) => return Err(format!("{target} is a coil: the value must be true or false, not {}", show(other))),
        (_, Value::Int(i)) => Some(*i as f64),
        (_, Value::Float(f)) => Some(*f),
        (_, other) => {
            let data_type = modbus.as_ref().map_or("", |t| t.data_type.as_str());
            return Err(format!("{target} is a {data_type} register: the value must be a number, not {}", show(other)));
        }
    };
    if number.is_some() && opcua && (entry.min.is_none() || entry.max.is_none()) {
        return Err(format!("{target} is an OPC-UA tag without min and max in commands.writable: numbers cannot be written to it"));
    }
    if let Some(v) = number {
        let (min, max) = (entry.min.unwrap_or(f64::NEG_INFINITY), entry.max.unwrap_or(f64::INFINITY));
        if !(min..=max).contains(&v) {
            return Err(format!("value {v} is out of the allowed range [{min}, {max}] for {target}"));
        }
    }
    if let Some(tag) = &modbus {
        encode_write(tag, &write.value).map_err(|e| format!("value {} cannot be written to {target}: {e}", show(&write.value)))?;
    }
    if let (Some(v), Some(step)) = (number, entry.max_step) {
        let last = match last_good {
            Some(Value::Int(i)) => *i as f64,
            Some(Value::Float(f)) => *f,
            _ => return Err(format!("{target} has no good reading yet, so the step to {v} cannot be checked against max_step {step}")),
        };
        let change = (v - last).abs();
        if change > step + SLACK * v.abs().max(last.abs()).max(1.0) {
            return Err(format!(
                "a change of {} from the last reading {last} to {v} is larger than max_step {step} for {target}",
                round(change)
            ));
        }
    }
    Ok(())
}

/// A value as the ERP wrote it.
fn show(v: &Value) -> String {
    match v {
        Value::Bool(b) => b.to_string(),
        Value::Int(i) => i.to_string(),
        Value::Float(f) => f.to_string(),
        Value::Text(t) => format!("{t:?}"),
    }
}

/// A difference without the binary noise (12 significant digits, like readings).
fn round(x: f64) -> f64 {
    format!("{x:.11e}").parse().unwrap_or(x)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use edge_drivers::modbus::{ByteOrder, DataType};
    use edge_drivers::{Protocol, TagConfig};

    use super::*;
    use crate::commands::config::WritableTag;

    fn devices() -> Vec<DeviceConfig> {
        let tag = |name: &str, table, data_type, scale| TagConfig {
            name: name.into(),
            table: Some(table),
            address: Some(1),
            data_type: Some(data_type),
            byte_order: ByteOrder::ABCD,
            scale,
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
                tag("flow", Table::Holding, DataType::U16, 0.1),
                tag("count", Table::Holding, DataType::U16, 1.0),
                tag("pump", Table::Coil, DataType::Bool, 1.0),
                tag("level", Table::Holding, DataType::I16, 1.0),
            ],
            ..DeviceConfig::default()
        }]
    }

    fn commands() -> CommandsConfig {
        let entry = |tag: &str, min, max, max_step| WritableTag { device: "plc".into(), tag: tag.into(), min, max, max_step };
        CommandsConfig {
            writes_enabled: true,
            writable: vec![
                entry("flow", Some(0.0), Some(500.0), Some(10.0)),
                entry("count", Some(-10.0), Some(100_000.0), None),
                entry("pump", None, None, None),
            ],
            ..Default::default()
        }
    }

    fn write(tag: &str, value: Value) -> WriteCommand {
        WriteCommand { id: "1".into(), device: "plc".into(), tag: tag.into(), value }
    }

    fn check(tag: &str, value: Value, last: Option<Value>) -> Result<(), String> {
        check_write(&commands(), &devices(), last.as_ref(), &write(tag, value))
    }

    #[test]
    fn an_allowed_write_passes() {
        assert_eq!(check("flow", Value::Float(313.4), Some(Value::Float(308.4))), Ok(()));
        assert_eq!(check("count", Value::Int(42), None), Ok(()));
        assert_eq!(check("pump", Value::Bool(true), None), Ok(()));
    }

    #[test]
    fn an_opcua_tag_takes_any_kind_of_value_but_numbers_need_limits() {
        // Given an OPC-UA device with two allowlisted tags, one with limits
        let ua_tag = |name: &str| TagConfig {
            name: name.into(),
            table: None,
            address: None,
            node_id: Some(format!("ns=2;s={name}")),
            ..TagConfig::default()
        };
        let devices = vec![DeviceConfig {
            name: "press".into(),
            protocol: Protocol::Opcua,
            tags: vec![ua_tag("speed"), ua_tag("mode")],
            ..DeviceConfig::default()
        }];
        let entry = |tag: &str, min, max| WritableTag { device: "press".into(), tag: tag.into(), min, max, max_step: None };
        let c = CommandsConfig {
            writes_enabled: true,
            writable: vec![entry("speed", Some(0.0), Some(100.0)), entry("mode", None, None)],
            ..Default::default()
        };
        let w = |tag: &str, value| WriteCommand { id: "1".into(), device: "press".into(), tag: tag.into(), value };
        // Then numbers are checked against the limits, text and booleans go to the driver
        assert_eq!(check_write(&c, &devices, None, &w("speed", Value::Float(50.0))), Ok(()));
        assert!(check_write(&c, &devices, None, &w("speed", Value::Float(150.0))).unwrap_err().contains("out of the allowed range"));
        assert_eq!(check_write(&c, &devices, None, &w("mode", Value::Text("manual".into()))), Ok(()));
        assert_eq!(check_write(&c, &devices, None, &w("mode", Value::Bool(true))), Ok(()));
        // And a number to a tag without limits is refused
        assert!(check_write(&c, &devices, None, &w("mode", Value::Int(3))).unwrap_err().contains("without min and max"));
    }

    #[test]
    fn writes_can_be_switched_off() {
        let mut c = commands();
        c.writes_enabled = false;
        let e = check_write(&c, &devices(), None, &write("count", Value::Int(1))).unwrap_err();
        assert_eq!(e, "writes are disabled on this gateway (commands.writes_enabled = false)");
    }

    #[test]
    fn only_allowlisted_tags_are_writable() {
        assert_eq!(
            check("level", Value::Int(1), None).unwrap_err(),
            "plc/level is not writable: it is not in the allowlist (commands.writable)"
        );
        let mut other = write("flow", Value::Int(1));
        other.device = "other".into();
        assert!(check_write(&commands(), &devices(), None, &other).unwrap_err().contains("not in the allowlist"));
    }

    #[test]
    fn the_value_must_have_the_tags_type() {
        assert_eq!(check("pump", Value::Int(1), None).unwrap_err(), "plc/pump is a coil: the value must be true or false, not 1");
        assert_eq!(
            check("count", Value::Bool(true), None).unwrap_err(),
            "plc/count is a u16 register: the value must be a number, not true"
        );
    }

    #[test]
    fn the_value_must_be_in_range() {
        assert_eq!(check("count", Value::Int(-11), None).unwrap_err(), "value -11 is out of the allowed range [-10, 100000] for plc/count");
        // -10 is in the range but not in a u16: refused by the next check.
        assert!(check("count", Value::Int(-10), None).unwrap_err().contains("outside the range of u16"));
        assert!(check("flow", Value::Float(500.1), Some(Value::Float(499.0))).unwrap_err().contains("out of the allowed range"));
        assert!(check("flow", Value::Float(500.0), Some(Value::Float(499.0))).is_ok());
    }

    #[test]
    fn the_value_must_fit_the_type_after_inverse_scaling() {
        let e = check("count", Value::Int(70_000), None).unwrap_err();
        assert!(e.starts_with("value 70000 cannot be written to plc/count: raw value 70000"), "{e}");
        assert!(e.contains("outside the range of u16"), "{e}");
        let e = check("flow", Value::Float(308.45), Some(Value::Float(308.4))).unwrap_err();
        assert!(e.contains("3084.5") && e.contains("not a whole number"), "{e}");
        let e = check("count", Value::Int(-1), None).unwrap_err();
        assert!(e.contains("outside the range of u16"), "{e}");
    }

    #[test]
    fn a_step_larger_than_max_step_is_refused() {
        let e = check("flow", Value::Float(320.0), Some(Value::Float(308.4))).unwrap_err();
        assert_eq!(e, "a change of 11.6 from the last reading 308.4 to 320 is larger than max_step 10 for plc/flow");
        assert!(check("flow", Value::Float(298.4), Some(Value::Float(308.4))).is_ok(), "exactly max_step down");
        assert!(check("flow", Value::Float(318.4), Some(Value::Int(308))).is_err());
    }

    #[test]
    fn without_a_good_reading_max_step_cannot_be_checked() {
        let e = check("flow", Value::Float(10.0), None).unwrap_err();
        assert!(e.contains("no good reading yet"), "{e}");
        // Without max_step, no reading is needed.
        assert!(check("count", Value::Int(5), None).is_ok());
    }
}
