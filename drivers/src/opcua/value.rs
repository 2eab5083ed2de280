//! OPC-UA data values → samples (pure, unit-tested), and engineering values → the
//! variant a write sends.
//!
//! Every scalar built-in type maps to one of our four value kinds: integers of every
//! width to `Int` (a `UInt64` above `i64::MAX` to `Float`), `Float`/`Double` to `Float`,
//! and the text-like types (`String`, `LocalizedText`, `QualifiedName`, `DateTime`,
//! `Guid`, `ByteString` as hex, `XmlElement`, `NodeId`, `StatusCode`) to `Text`. Arrays
//! and structures are not values a tag can hold: they come out bad, with the reason.
//!
//! Quality follows the status code's severity (good / uncertain / bad) and carries the
//! code's name (`BadNodeIdUnknown`, `UncertainLastUsableValue`…).

use chrono::{DateTime, Utc};
use opcua::types::{DataValue, StatusCode, Variant};

use super::device::OpcuaTag;
use crate::sample::{Quality, Sample, Value};

/// Turns one notification (or read result) of `tag` into a sample, received at `now`.
/// Both of the server's timestamps are kept: `server_ts` is its `ServerTimestamp`, and
/// the source timestamp is its `SourceTimestamp`, else the `ServerTimestamp`, else `now`
/// (a server may leave either out; OPC-UA's "no time" is the epoch or `None`).
pub fn to_sample(tag: &OpcuaTag, dv: &DataValue, now: DateTime<Utc>) -> Sample {
    let status = dv.status.unwrap_or(StatusCode::Good);
    let stamp = |t: Option<opcua::types::DateTime>| t.map(|t| t.as_chrono()).filter(|t| t.timestamp() > 0);
    let server_ts = stamp(dv.server_timestamp);
    let source_ts = stamp(dv.source_timestamp).or(server_ts).unwrap_or(now);
    let mut quality = quality_of(status);
    let value = match dv.value.as_ref().map(variant_value) {
        None | Some(Ok(None)) => {
            if quality.is_good() {
                quality = Quality::Bad("the server sent no value".into());
            }
            None
        }
        Some(Ok(Some(v))) => Some(v),
        Some(Err(why)) => {
            quality = Quality::Bad(why);
            None
        }
    };
    let (value, quality) = match value {
        // A value with a bad status is not to be used (OPC-UA Part 4, 7.34): not reported.
        Some(_) if matches!(quality, Quality::Bad(_)) => (None, quality),
        Some(v) => engineering(tag, v, quality),
        None => (None, quality),
    };
    Sample { tag: tag.name.clone(), value, quality, source_ts, server_ts, agent_ts: now }
}

/// A bad sample for `tag` without a value (connection lost, node unknown…).
pub fn bad_sample(tag: &OpcuaTag, reason: &str, now: DateTime<Utc>) -> Sample {
    Sample { tag: tag.name.clone(), value: None, quality: Quality::Bad(reason.to_string()), source_ts: now, server_ts: None, agent_ts: now }
}

/// Good / uncertain / bad by the code's severity, with its name.
pub fn quality_of(status: StatusCode) -> Quality {
    if status.is_good() {
        Quality::Good
    } else if status.is_uncertain() {
        Quality::Uncertain(status.to_string())
    } else {
        Quality::Bad(status.to_string())
    }
}

/// The value of a variant; `Ok(None)` for an empty one, `Err` for a kind a tag cannot hold.
pub fn variant_value(v: &Variant) -> Result<Option<Value>, String> {
    Ok(Some(match v {
        Variant::Empty => return Ok(None),
        Variant::Boolean(b) => Value::Bool(*b),
        Variant::SByte(x) => Value::Int(i64::from(*x)),
        Variant::Byte(x) => Value::Int(i64::from(*x)),
        Variant::Int16(x) => Value::Int(i64::from(*x)),
        Variant::UInt16(x) => Value::Int(i64::from(*x)),
        Variant::Int32(x) => Value::Int(i64::from(*x)),
        Variant::UInt32(x) => Value::Int(i64::from(*x)),
        Variant::Int64(x) => Value::Int(*x),
        Variant::UInt64(x) => i64::try_from(*x).map_or(Value::Float(*x as f64), Value::Int),
        Variant::Float(x) => Value::Float(f64::from(*x)),
        Variant::Double(x) => Value::Float(*x),
        Variant::String(s) => Value::Text(s.as_ref().to_string()),
        Variant::LocalizedText(t) => Value::Text(t.text.as_ref().to_string()),
        Variant::QualifiedName(q) => Value::Text(q.name.as_ref().to_string()),
        Variant::DateTime(t) => Value::Text(t.as_chrono().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
        Variant::Guid(g) => Value::Text(g.to_string()),
        Variant::ByteString(b) => Value::Text(b.value.as_deref().map(hex).unwrap_or_default()),
        Variant::XmlElement(x) => Value::Text(x.to_string()),
        Variant::NodeId(n) => Value::Text(n.to_string()),
        Variant::ExpandedNodeId(n) => Value::Text(n.to_string()),
        Variant::StatusCode(c) => Value::Text(c.to_string()),
        Variant::Variant(inner) => return variant_value(inner),
        Variant::Array(_) => return Err("arrays are not supported: map one element per tag".into()),
        Variant::ExtensionObject(_) | Variant::DataValue(_) | Variant::DiagnosticInfo(_) => {
            return Err(format!("{} values are not supported", kind_name(v)))
        }
    }))
}

fn kind_name(v: &Variant) -> &'static str {
    match v {
        Variant::ExtensionObject(_) => "structure (ExtensionObject)",
        Variant::DataValue(_) => "DataValue",
        _ => "DiagnosticInfo",
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Scaling and clamping of a numeric value, as for Modbus tags: `raw × scale + offset`,
/// clamped values marked uncertain.
fn engineering(tag: &OpcuaTag, v: Value, quality: Quality) -> (Option<Value>, Quality) {
    let raw = match v {
        Value::Int(i) if tag.is_unscaled() && tag.clamp_min.is_none() && tag.clamp_max.is_none() => return (Some(Value::Int(i)), quality),
        Value::Int(i) => i as f64,
        Value::Float(f) => f,
        other => return (Some(other), quality),
    };
    let mut x = raw * tag.scale + tag.offset;
    let mut quality = quality;
    if !x.is_finite() {
        return (None, Quality::Bad(format!("{raw} × scale + offset is not a finite number")));
    }
    if let Some(lo) = tag.clamp_min.filter(|lo| x < *lo) {
        x = lo;
        if quality.is_good() {
            quality = Quality::Uncertain(format!("clamped to clamp_min {lo}"));
        }
    }
    if let Some(hi) = tag.clamp_max.filter(|hi| x > *hi) {
        x = hi;
        if quality.is_good() {
            quality = Quality::Uncertain(format!("clamped to clamp_max {hi}"));
        }
    }
    (Some(Value::Float(x)), quality)
}

/// The variant to write for `value`, shaped like `current` (the node's present value),
/// so that the server gets its own data type. Numbers are inverse-scaled.
pub fn to_variant(tag: &OpcuaTag, value: &Value, current: &Variant) -> Result<Variant, String> {
    let number = || -> Result<f64, String> {
        let x = match value {
            Value::Int(i) => *i as f64,
            Value::Float(f) => *f,
            Value::Bool(_) | Value::Text(_) => {
                return Err(format!("the node holds a number ({}): the value must be a number", type_name(current)))
            }
        };
        if !x.is_finite() {
            return Err("the value is not a finite number".into());
        }
        Ok((x - tag.offset) / tag.scale)
    };
    let int = |min: f64, max: f64| -> Result<i64, String> {
        let raw = number()?;
        let rounded = raw.round();
        if (raw - rounded).abs() > 1e-9 * rounded.abs().max(1.0) {
            return Err(format!("raw value {raw} is not a whole number, but the node is {}", type_name(current)));
        }
        if rounded < min || rounded > max {
            return Err(format!("raw value {rounded} is outside the range of {} ({min} to {max})", type_name(current)));
        }
        Ok(rounded as i64)
    };
    Ok(match current {
        Variant::Boolean(_) => match value {
            Value::Bool(b) => Variant::Boolean(*b),
            _ => return Err("the node is a Boolean: the value must be true or false".into()),
        },
        Variant::SByte(_) => Variant::SByte(int(i8::MIN.into(), i8::MAX.into())? as i8),
        Variant::Byte(_) => Variant::Byte(int(0.0, u8::MAX.into())? as u8),
        Variant::Int16(_) => Variant::Int16(int(i16::MIN.into(), i16::MAX.into())? as i16),
        Variant::UInt16(_) => Variant::UInt16(int(0.0, u16::MAX.into())? as u16),
        Variant::Int32(_) => Variant::Int32(int(i32::MIN.into(), i32::MAX.into())? as i32),
        Variant::UInt32(_) => Variant::UInt32(int(0.0, u32::MAX.into())? as u32),
        Variant::Int64(_) => Variant::Int64(int(i64::MIN as f64, i64::MAX as f64)?),
        Variant::UInt64(_) => Variant::UInt64(int(0.0, u64::MAX as f64)? as u64),
        Variant::Float(_) => {
            let x = number()?;
            if x.abs() > f64::from(f32::MAX) {
                return Err(format!("raw value {x} is outside the range of Float"));
            }
            Variant::Float(x as f32)
        }
        Variant::Double(_) => Variant::Double(number()?),
        Variant::String(_) => match value {
            Value::Text(t) => Variant::String(t.as_str().into()),
            _ => return Err("the node is a String: the value must be text".into()),
        },
        other => return Err(format!("writing {} nodes is not supported", type_name(other))),
    })
}

/// The built-in type name of a variant, for messages.
pub fn type_name(v: &Variant) -> &'static str {
    match v {
        Variant::Empty => "Empty",
        Variant::Boolean(_) => "Boolean",
        Variant::SByte(_) => "SByte",
        Variant::Byte(_) => "Byte",
        Variant::Int16(_) => "Int16",
        Variant::UInt16(_) => "UInt16",
        Variant::Int32(_) => "Int32",
        Variant::UInt32(_) => "UInt32",
        Variant::Int64(_) => "Int64",
        Variant::UInt64(_) => "UInt64",
        Variant::Float(_) => "Float",
        Variant::Double(_) => "Double",
        Variant::String(_) => "String",
        Variant::DateTime(_) => "DateTime",
        Variant::Guid(_) => "Guid",
        Variant::StatusCode(_) => "StatusCode",
        Variant::ByteString(_) => "ByteString",
        Variant::XmlElement(_) => "XmlElement",
        Variant::QualifiedName(_) => "QualifiedName",
        Variant::LocalizedText(_) => "LocalizedText",
        Variant::NodeId(_) => "NodeId",
        Variant::ExpandedNodeId(_) => "ExpandedNodeId",
        Variant::ExtensionObject(_) => "ExtensionObject",
        Variant::Variant(_) => "Variant",
        Variant::DataValue(_) => "DataValue",
        Variant::DiagnosticInfo(_) => "DiagnosticInfo",
        Variant::Array(_) => "Array",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TagConfig;
    use crate::opcua::OpcuaConfig;
    use opcua::types::{ByteString, DateTime as UaDateTime, Guid, LocalizedText, QualifiedName};

    fn tag() -> OpcuaTag {
        let cfg = TagConfig { name: "t".into(), table: None, address: None, node_id: Some("ns=2;i=1".into()), ..Default::default() };
        OpcuaTag::build(&cfg, &OpcuaConfig::default(), std::time::Duration::from_secs(1)).unwrap()
    }

    fn dv(v: impl Into<Variant>, status: StatusCode) -> DataValue {
        DataValue { value: Some(v.into()), status: Some(status), source_timestamp: Some(UaDateTime::now()), ..Default::default() }
    }

    #[test]
    fn every_scalar_built_in_type_becomes_a_value() {
        let cases: Vec<(Variant, Value)> = vec![
            (true.into(), Value::Bool(true)),
            (Variant::SByte(-5), Value::Int(-5)),
            (Variant::Byte(200), Value::Int(200)),
            (Variant::Int16(-300), Value::Int(-300)),
            (Variant::UInt16(60000), Value::Int(60000)),
            (Variant::Int32(-70000), Value::Int(-70000)),
            (Variant::UInt32(4_000_000_000), Value::Int(4_000_000_000)),
            (Variant::Int64(-1 << 40), Value::Int(-1 << 40)),
            (Variant::UInt64(1 << 40), Value::Int(1 << 40)),
            (Variant::UInt64(u64::MAX), Value::Float(u64::MAX as f64)),
            (Variant::Float(1.5), Value::Float(1.5)),
            (Variant::Double(2.25), Value::Float(2.25)),
            (Variant::String("abc".into()), Value::Text("abc".into())),
            (Variant::LocalizedText(Box::new(LocalizedText::new("en", "hello"))), Value::Text("hello".into())),
            (Variant::QualifiedName(Box::new(QualifiedName::new(2, "Q"))), Value::Text("Q".into())),
            (Variant::ByteString(ByteString::from(vec![1u8, 0xab])), Value::Text("01ab".into())),
            (Variant::StatusCode(StatusCode::BadTimeout), Value::Text("BadTimeout".into())),
        ];
        for (variant, expected) in cases {
            let s = to_sample(&tag(), &dv(variant.clone(), StatusCode::Good), Utc::now());
            assert_eq!(s.value, Some(expected), "{variant:?}");
            assert!(s.quality.is_good());
        }
        let guid = Guid::new();
        assert_eq!(variant_value(&Variant::Guid(Box::new(guid.clone()))).unwrap(), Some(Value::Text(guid.to_string())));
        let t = variant_value(&Variant::DateTime(Box::new(UaDateTime::now()))).unwrap();
        assert!(matches!(t, Some(Value::Text(s)) if s.ends_with('Z')));
    }

    #[test]
    fn status_codes_become_qualities_with_the_code_name() {
        let s = to_sample(&tag(), &dv(1.0, StatusCode::UncertainLastUsableValue), Utc::now());
        assert_eq!(s.quality, Quality::Uncertain("UncertainLastUsableValue".into()));
        let s = to_sample(&tag(), &DataValue { status: Some(StatusCode::BadNodeIdUnknown), ..Default::default() }, Utc::now());
        assert_eq!(s.quality, Quality::Bad("BadNodeIdUnknown".into()));
        assert_eq!(s.value, None);
    }

    #[test]
    fn a_good_status_without_a_value_is_bad() {
        let s = to_sample(&tag(), &DataValue { status: Some(StatusCode::Good), ..Default::default() }, Utc::now());
        assert!(matches!(s.quality, Quality::Bad(_)));
    }

    fn at(rfc3339: &str) -> UaDateTime {
        UaDateTime::from(chrono::DateTime::parse_from_rfc3339(rfc3339).unwrap().with_timezone(&Utc))
    }

    #[test]
    fn both_the_source_and_the_server_timestamp_are_kept() {
        // Given a value the PLC stamped at 10:00:00 and the server at 10:00:02
        let mut d = dv(1.0, StatusCode::Good);
        d.source_timestamp = Some(at("2024-05-01T10:00:00Z"));
        d.server_timestamp = Some(at("2024-05-01T10:00:02Z"));
        // Then the sample carries each in its own field
        let s = to_sample(&tag(), &d, Utc::now());
        assert_eq!(s.source_ts.to_rfc3339(), "2024-05-01T10:00:00+00:00");
        assert_eq!(s.server_ts.map(|t| t.to_rfc3339()).as_deref(), Some("2024-05-01T10:00:02+00:00"));
    }

    #[test]
    fn the_server_timestamp_stands_in_for_a_missing_source_timestamp() {
        let mut d = dv(1.0, StatusCode::Good);
        d.source_timestamp = None;
        d.server_timestamp = Some(at("2024-05-01T10:00:02Z"));
        let s = to_sample(&tag(), &d, Utc::now());
        assert_eq!(s.source_ts.to_rfc3339(), "2024-05-01T10:00:02+00:00");
        assert_eq!(s.server_ts.map(|t| t.to_rfc3339()).as_deref(), Some("2024-05-01T10:00:02+00:00"));
    }

    #[test]
    fn a_server_without_timestamps_gets_the_receive_time_and_no_server_timestamp() {
        // OPC-UA's "no time" is either absent or the epoch (DateTime::null)
        let now = Utc::now();
        let mut d = dv(1.0, StatusCode::Good);
        d.source_timestamp = Some(UaDateTime::null());
        d.server_timestamp = None;
        let s = to_sample(&tag(), &d, now);
        assert_eq!(s.source_ts, now);
        assert_eq!(s.server_ts, None);
    }

    #[test]
    fn arrays_are_bad_with_a_reason() {
        let arr = Variant::from(vec![1i32, 2, 3]);
        let s = to_sample(&tag(), &dv(arr, StatusCode::Good), Utc::now());
        assert!(matches!(&s.quality, Quality::Bad(r) if r.contains("arrays")));
    }

    #[test]
    fn numbers_are_scaled_and_clamped_like_modbus_tags() {
        let t = OpcuaTag { scale: 0.1, offset: 1.0, clamp_max: Some(5.0), ..tag() };
        let s = to_sample(&t, &dv(Variant::Int16(20), StatusCode::Good), Utc::now());
        assert_eq!(s.value, Some(Value::Float(3.0)));
        let s = to_sample(&t, &dv(Variant::Int16(100), StatusCode::Good), Utc::now());
        assert_eq!(s.value, Some(Value::Float(5.0)));
        assert!(matches!(s.quality, Quality::Uncertain(_)));
    }

    #[test]
    fn a_write_takes_the_type_of_the_node_and_is_inverse_scaled() {
        let t = OpcuaTag { scale: 0.1, ..tag() };
        assert_eq!(to_variant(&t, &Value::Float(12.3), &Variant::UInt16(0)).unwrap(), Variant::UInt16(123));
        assert!(to_variant(&t, &Value::Float(12.34), &Variant::UInt16(0)).unwrap_err().contains("whole"));
        assert!(to_variant(&t, &Value::Float(-1.0), &Variant::UInt16(0)).unwrap_err().contains("range"));
        assert_eq!(to_variant(&tag(), &Value::Bool(true), &Variant::Boolean(false)).unwrap(), Variant::Boolean(true));
        assert!(to_variant(&tag(), &Value::Int(1), &Variant::Boolean(false)).is_err());
        assert_eq!(to_variant(&tag(), &Value::Text("x".into()), &Variant::String("".into())).unwrap(), Variant::String("x".into()));
        assert_eq!(to_variant(&tag(), &Value::Int(2), &Variant::Double(0.0)).unwrap(), Variant::Double(2.0));
    }
}
