//! Turning raw registers into engineering values. Pure functions, no I/O.

use crate::config::TagConfig;
use crate::modbus::types::{ByteOrder, DataType};
use crate::sample::Value;

/// Reorders the wire bytes of a 32-bit value into big-endian `[A, B, C, D]`.
///
/// `wire` holds the bytes as they arrive: high byte of the first register first.
pub fn to_big_endian_4(wire: [u8; 4], order: ByteOrder) -> [u8; 4] {
    let [w0, w1, w2, w3] = wire;
    match order {
        ByteOrder::ABCD => [w0, w1, w2, w3],
        ByteOrder::CDAB => [w2, w3, w0, w1],
        ByteOrder::BADC => [w1, w0, w3, w2],
        ByteOrder::DCBA => [w3, w2, w1, w0],
    }
}

/// Reorders the wire bytes of a 16-bit value: orders whose first letter pair is `BA`
/// (`BADC`, `DCBA`) swap the two bytes.
pub fn to_big_endian_2(wire: [u8; 2], order: ByteOrder) -> [u8; 2] {
    match order {
        ByteOrder::ABCD | ByteOrder::CDAB => wire,
        ByteOrder::BADC | ByteOrder::DCBA => [wire[1], wire[0]],
    }
}

/// The inverse of decoding: the registers a device holds for `value` (used by the
/// simulated plants and the tests to lay out register maps).
pub fn encode_registers(value: f64, data_type: DataType, order: ByteOrder) -> Vec<u16> {
    let words = |be: [u8; 4]| {
        // Decoding maps wire → big-endian with a permutation that is its own inverse.
        let wire = to_big_endian_4(be, order);
        vec![u16::from_be_bytes([wire[0], wire[1]]), u16::from_be_bytes([wire[2], wire[3]])]
    };
    match data_type {
        DataType::Bool => vec![u16::from(value != 0.0)],
        DataType::U16 => vec![u16::from_be_bytes(to_big_endian_2((value as u16).to_be_bytes(), order))],
        DataType::I16 => vec![u16::from_be_bytes(to_big_endian_2((value as i16).to_be_bytes(), order))],
        DataType::U32 => words((value as u32).to_be_bytes()),
        DataType::I32 => words((value as i32).to_be_bytes()),
        DataType::F32 => words((value as f32).to_be_bytes()),
    }
}

/// Decodes the raw registers of one tag (exactly `data_type.register_count()` of them)
/// and applies its scaling.
///
/// Unscaled integers stay integers; anything scaled becomes a float. An `f32` is widened
/// through its shortest decimal form so that `3.14` on the PLC reads `3.14`, not
/// `3.140000104904175`.
pub fn decode_registers(regs: &[u16], tag: &TagConfig) -> Result<Value, DecodeError> {
    let data_type = tag.data_type();
    let needed = usize::from(data_type.register_count());
    if regs.len() != needed {
        return Err(DecodeError::WrongLength { needed, got: regs.len() });
    }
    let raw = match data_type {
        DataType::Bool => return Ok(Value::Bool(regs[0] != 0)),
        DataType::U16 => Raw::Int(i64::from(u16::from_be_bytes(to_big_endian_2(regs[0].to_be_bytes(), tag.byte_order)))),
        DataType::I16 => Raw::Int(i64::from(i16::from_be_bytes(to_big_endian_2(regs[0].to_be_bytes(), tag.byte_order)))),
        DataType::U32 | DataType::I32 | DataType::F32 => {
            let [a, b] = regs[0].to_be_bytes();
            let [c, d] = regs[1].to_be_bytes();
            let be = to_big_endian_4([a, b, c, d], tag.byte_order);
            match data_type {
                DataType::U32 => Raw::Int(i64::from(u32::from_be_bytes(be))),
                DataType::I32 => Raw::Int(i64::from(i32::from_be_bytes(be))),
                _ => {
                    let f = f32::from_be_bytes(be);
                    if !f.is_finite() {
                        return Err(DecodeError::NotFinite);
                    }
                    Raw::Float(widen_f32(f))
                }
            }
        }
    };
    match scale(raw, tag) {
        // A huge scale can overflow a finite reading; JSON has no infinity.
        Value::Float(f) if !f.is_finite() => Err(DecodeError::NotFinite),
        value => Ok(value),
    }
}

/// Decodes one bit of a coil or discrete table.
pub fn decode_bit(bit: bool) -> Value {
    Value::Bool(bit)
}

enum Raw {
    Int(i64),
    Float(f64),
}

fn scale(raw: Raw, tag: &TagConfig) -> Value {
    match raw {
        Raw::Int(i) if tag.is_unscaled() => Value::Int(i),
        Raw::Int(i) => Value::Float(round_significant(i as f64 * tag.scale + tag.offset)),
        Raw::Float(f) if tag.is_unscaled() => Value::Float(f),
        Raw::Float(f) => Value::Float(round_significant(f * tag.scale + tag.offset)),
    }
}

/// Rounds to 12 significant digits, removing binary noise from scaling
/// (`3084 × 0.1` reads `308.4`, not `308.40000000000003`). Register values carry at most
/// 10 significant digits, so nothing real is lost.
fn round_significant(x: f64) -> f64 {
    format!("{x:.11e}").parse().unwrap_or(x)
}

/// f32 → f64 through the shortest decimal that round-trips the f32.
fn widen_f32(f: f32) -> f64 {
    // Display of f32 prints the shortest round-trip form, which always parses as f64.
    f.to_string().parse::<f64>().unwrap_or(f64::from(f))
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    #[error("expected {needed} registers, got {got}")]
    WrongLength { needed: usize, got: usize },
    #[error("the value is NaN or infinite (in the registers, or after scaling)")]
    NotFinite,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modbus::types::Table;

    fn tag(data_type: DataType, byte_order: ByteOrder) -> TagConfig {
        TagConfig {
            name: "t".into(),
            table: Table::Holding,
            address: 0,
            data_type: Some(data_type),
            byte_order,
            scale: 1.0,
            offset: 0.0,
            unit: None,
            description: None,
        }
    }

    // 0x12345678 laid out by each byte order, as a device manual would show it.
    const WIRE_0X12345678: [(ByteOrder, [u16; 2]); 4] = [
        (ByteOrder::ABCD, [0x1234, 0x5678]),
        (ByteOrder::CDAB, [0x5678, 0x1234]),
        (ByteOrder::BADC, [0x3412, 0x7856]),
        (ByteOrder::DCBA, [0x7856, 0x3412]),
    ];

    #[test]
    fn u32_decodes_identically_from_every_byte_order() {
        for (order, regs) in WIRE_0X12345678 {
            let v = decode_registers(&regs, &tag(DataType::U32, order)).unwrap();
            assert_eq!(v, Value::Int(0x1234_5678), "byte order {order:?}");
        }
    }

    #[test]
    fn i32_keeps_its_sign_in_every_byte_order() {
        for order in [ByteOrder::ABCD, ByteOrder::CDAB, ByteOrder::BADC, ByteOrder::DCBA] {
            let regs = encode_registers(-123_456.0, DataType::I32, order);
            let v = decode_registers(&regs, &tag(DataType::I32, order)).unwrap();
            assert_eq!(v, Value::Int(-123_456), "byte order {order:?}");
        }
    }

    #[test]
    fn f32_reads_as_the_decimal_the_plc_holds() {
        // 3.14f32 is 0x4048F5C3 big-endian.
        let cases = [
            (ByteOrder::ABCD, [0x4048, 0xF5C3]),
            (ByteOrder::CDAB, [0xF5C3, 0x4048]),
            (ByteOrder::BADC, [0x4840, 0xC3F5]),
            (ByteOrder::DCBA, [0xC3F5, 0x4840]),
        ];
        for (order, regs) in cases {
            let v = decode_registers(&regs, &tag(DataType::F32, order)).unwrap();
            assert_eq!(v, Value::Float(3.14), "byte order {order:?}");
        }
    }

    #[test]
    fn sixteen_bit_values_swap_bytes_only_for_ba_orders() {
        assert_eq!(decode_registers(&[0x0102], &tag(DataType::U16, ByteOrder::ABCD)).unwrap(), Value::Int(0x0102));
        assert_eq!(decode_registers(&[0x0102], &tag(DataType::U16, ByteOrder::CDAB)).unwrap(), Value::Int(0x0102));
        assert_eq!(decode_registers(&[0x0102], &tag(DataType::U16, ByteOrder::BADC)).unwrap(), Value::Int(0x0201));
        assert_eq!(decode_registers(&[0x0102], &tag(DataType::U16, ByteOrder::DCBA)).unwrap(), Value::Int(0x0201));
        assert_eq!(decode_registers(&[0xFFFE], &tag(DataType::I16, ByteOrder::ABCD)).unwrap(), Value::Int(-2));
    }

    #[test]
    fn scaling_turns_integers_into_engineering_floats() {
        let mut t = tag(DataType::I16, ByteOrder::ABCD);
        t.scale = 0.5;
        t.offset = -10.0;
        assert_eq!(decode_registers(&[0xFF9C], &t).unwrap(), Value::Float(-60.0)); // -100 * 0.5 - 10
    }

    #[test]
    fn scaling_by_a_tenth_reads_as_the_decimal_an_engineer_expects() {
        let mut t = tag(DataType::U16, ByteOrder::ABCD);
        t.scale = 0.1;
        assert_eq!(decode_registers(&[3084], &t).unwrap(), Value::Float(308.4));
        assert_eq!(decode_registers(&[1234], &t).unwrap(), Value::Float(123.4));
    }

    #[test]
    fn nan_in_a_float_register_is_an_error_not_a_value() {
        assert_eq!(
            decode_registers(&[0x7FC0, 0x0000], &tag(DataType::F32, ByteOrder::ABCD)),
            Err(DecodeError::NotFinite)
        );
    }

    #[test]
    fn a_scale_that_overflows_to_infinity_is_an_error_not_a_null_value() {
        let mut t = tag(DataType::F32, ByteOrder::ABCD);
        t.scale = 1e300;
        let regs = encode_registers(3.0e38, DataType::F32, ByteOrder::ABCD);
        assert_eq!(decode_registers(&regs, &t), Err(DecodeError::NotFinite));
    }

    #[test]
    fn a_short_register_slice_is_reported() {
        assert_eq!(
            decode_registers(&[0x0001], &tag(DataType::U32, ByteOrder::ABCD)),
            Err(DecodeError::WrongLength { needed: 2, got: 1 })
        );
    }

    #[test]
    fn encode_then_decode_round_trips_for_every_type_and_order() {
        let values = [(DataType::U16, 65_000.0), (DataType::I16, -32_000.0), (DataType::U32, 4_000_000_000.0),
            (DataType::I32, -2_000_000_000.0), (DataType::F32, -1234.5)];
        for order in [ByteOrder::ABCD, ByteOrder::CDAB, ByteOrder::BADC, ByteOrder::DCBA] {
            for (dt, v) in values {
                let regs = encode_registers(v, dt, order);
                let got = decode_registers(&regs, &tag(dt, order)).unwrap();
                let got = match got { Value::Int(i) => i as f64, Value::Float(f) => f, other => panic!("{other:?}") };
                assert_eq!(got, v, "{dt:?} {order:?}");
            }
        }
    }
}
