//! Turning raw registers into engineering values, and back. Pure functions, no I/O.
//!
//! **Byte orders.** A value of `n` registers is turned into big-endian bytes by two
//! independent steps, each its own inverse: orders whose registers come least
//! significant first (`CDAB`, `DCBA`) reverse the registers, and orders whose bytes are
//! swapped inside a register (`BADC`, `DCBA`) swap the two bytes of each. The same rule
//! gives the 16-bit (`AB`/`BA`) and the 64-bit orders (`ABCDEFGH`, `GHEFCDAB`,
//! `BADCFEHG`, `HGFEDCBA`).

use crate::modbus::device::ModbusTag;
use crate::modbus::types::{ByteOrder, DataType};
use crate::sample::Value;

/// The big-endian bytes of a numeric value laid out in `regs` with `order`.
pub fn to_big_endian(regs: &[u16], order: ByteOrder) -> Vec<u8> {
    let mut words: Vec<u16> = regs.to_vec();
    if order.words_reversed() {
        words.reverse();
    }
    words.into_iter().flat_map(|w| if order.bytes_swapped() { w.swap_bytes() } else { w }.to_be_bytes()).collect()
}

/// The registers that hold the big-endian bytes `be` (an even number of them) in `order`.
pub fn from_big_endian(be: &[u8], order: ByteOrder) -> Vec<u16> {
    let mut words: Vec<u16> = be
        .chunks(2)
        .map(|c| {
            let w = u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)]);
            if order.bytes_swapped() {
                w.swap_bytes()
            } else {
                w
            }
        })
        .collect();
    if order.words_reversed() {
        words.reverse();
    }
    words
}

/// [`to_big_endian`] for values of at most four registers, without allocating (the
/// decoding of every reading goes through here): the bytes, and how many are used.
fn to_big_endian_fixed(regs: &[u16], order: ByteOrder) -> [u8; 8] {
    let mut out = [0u8; 8];
    let n = regs.len().min(4);
    for (k, w) in regs[..n].iter().enumerate() {
        let slot = if order.words_reversed() { n - 1 - k } else { k };
        let w = if order.bytes_swapped() { w.swap_bytes() } else { *w };
        out[slot * 2..slot * 2 + 2].copy_from_slice(&w.to_be_bytes());
    }
    out
}

/// Reorders the wire bytes of a 32-bit value into big-endian `[A, B, C, D]`.
pub fn to_big_endian_4(wire: [u8; 4], order: ByteOrder) -> [u8; 4] {
    let regs = [u16::from_be_bytes([wire[0], wire[1]]), u16::from_be_bytes([wire[2], wire[3]])];
    let be = to_big_endian(&regs, order);
    [be[0], be[1], be[2], be[3]]
}

/// Reorders the wire bytes of a 16-bit value: orders whose first letter pair is `BA`
/// (`BADC`, `DCBA`) swap the two bytes.
pub fn to_big_endian_2(wire: [u8; 2], order: ByteOrder) -> [u8; 2] {
    if order.bytes_swapped() {
        [wire[1], wire[0]]
    } else {
        wire
    }
}

/// The inverse of decoding: the registers a device holds for the raw (unscaled) `value`
/// (used by the simulated plants and the tests to lay out register maps). Integers are
/// rounded and saturated to the type; a `bool` is one register holding 0 or 1; a string
/// cannot be given as a number and encodes as one zero register.
pub fn encode_registers(value: f64, data_type: DataType, order: ByteOrder) -> Vec<u16> {
    match data_type {
        DataType::Bool => vec![u16::from(value != 0.0)],
        DataType::U16 => from_big_endian(&(value.round() as u16).to_be_bytes(), order),
        DataType::I16 => from_big_endian(&(value.round() as i16).to_be_bytes(), order),
        DataType::U32 => from_big_endian(&(value.round() as u32).to_be_bytes(), order),
        DataType::I32 => from_big_endian(&(value.round() as i32).to_be_bytes(), order),
        DataType::U64 => from_big_endian(&(value.round() as u64).to_be_bytes(), order),
        DataType::I64 => from_big_endian(&(value.round() as i64).to_be_bytes(), order),
        DataType::F32 => from_big_endian(&(value as f32).to_be_bytes(), order),
        DataType::F64 => from_big_endian(&value.to_be_bytes(), order),
        DataType::String => vec![0],
    }
}

/// The registers holding the text `text` in `length` registers: two ASCII characters
/// per register, first character in the high byte (low byte with `byte_swap`), padded
/// with NUL. Longer text is cut.
pub fn encode_string(text: &str, length: u16, byte_swap: bool) -> Vec<u16> {
    let mut bytes: Vec<u8> = text.bytes().take(usize::from(length) * 2).collect();
    bytes.resize(usize::from(length) * 2, 0);
    bytes
        .chunks(2)
        .map(|c| {
            let w = u16::from_be_bytes([c[0], c[1]]);
            if byte_swap {
                w.swap_bytes()
            } else {
                w
            }
        })
        .collect()
}

/// The text held in `regs` (see [`encode_string`]): up to the first NUL, trailing spaces
/// removed; bytes that are not ASCII show as U+FFFD.
pub fn decode_string(regs: &[u16], byte_swap: bool) -> String {
    let bytes: Vec<u8> =
        regs.iter().flat_map(|w| if byte_swap { w.swap_bytes() } else { *w }.to_be_bytes()).take_while(|b| *b != 0).collect();
    let text: String = bytes.iter().map(|&b| if b.is_ascii() { char::from(b) } else { '\u{FFFD}' }).collect();
    text.trim_end().to_string()
}

/// A decoded reading, and whether clamping changed it.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    pub value: Value,
    /// The engineering value before clamping, when `clamp_min`/`clamp_max` changed it.
    pub clamped_from: Option<f64>,
}

/// Decodes the raw registers of one tag (exactly `tag.register_count()` of them)
/// and applies its scaling and clamping (a clamped value is returned clamped; see
/// [`decode_tag`] to know whether it was).
pub fn decode_registers(regs: &[u16], tag: &ModbusTag) -> Result<Value, DecodeError> {
    decode_tag(regs, tag).map(|d| d.value)
}

/// Decodes the raw registers of one tag: type, byte order, bit, scaling, clamping.
///
/// Unscaled integers stay integers (a `u64` above the `i64` range becomes a float);
/// anything scaled becomes a float. An `f32` is widened through its shortest decimal
/// form so that `0.3` on the PLC reads `0.3`, not `0.30000001192092896`.
pub fn decode_tag(regs: &[u16], tag: &ModbusTag) -> Result<Decoded, DecodeError> {
    let data_type = tag.data_type;
    let needed = usize::from(tag.register_count());
    if regs.len() != needed {
        return Err(DecodeError::WrongLength { needed, got: regs.len() });
    }
    let plain = |value| Ok(Decoded { value, clamped_from: None });
    let raw = match data_type {
        DataType::Bool => {
            let bit = tag.bit.map_or(regs[0] != 0, |b| (regs[0] >> b.min(15)) & 1 == 1);
            return plain(Value::Bool(bit));
        }
        DataType::String => return plain(Value::Text(decode_string(regs, tag.byte_swap))),
        _ => {
            // Numbers are 1, 2 or 4 registers (checked against the type above).
            let be = to_big_endian_fixed(regs, tag.byte_order);
            match data_type {
                DataType::U16 => Raw::Int(i128::from(u16::from_be_bytes([be[0], be[1]]))),
                DataType::I16 => Raw::Int(i128::from(i16::from_be_bytes([be[0], be[1]]))),
                DataType::U32 => Raw::Int(i128::from(u32::from_be_bytes([be[0], be[1], be[2], be[3]]))),
                DataType::I32 => Raw::Int(i128::from(i32::from_be_bytes([be[0], be[1], be[2], be[3]]))),
                DataType::U64 => Raw::Int(i128::from(u64::from_be_bytes(be))),
                DataType::I64 => Raw::Int(i128::from(i64::from_be_bytes(be))),
                DataType::F32 => {
                    let f = f32::from_be_bytes([be[0], be[1], be[2], be[3]]);
                    if !f.is_finite() {
                        return Err(DecodeError::NotFinite);
                    }
                    Raw::Float(widen_f32(f))
                }
                _ => {
                    let f = f64::from_be_bytes(be);
                    if !f.is_finite() {
                        return Err(DecodeError::NotFinite);
                    }
                    Raw::Float(f)
                }
            }
        }
    };
    let value = scale(raw, tag);
    let number = match value {
        // A huge scale can overflow a finite reading; JSON has no infinity.
        Value::Float(f) if !f.is_finite() => return Err(DecodeError::NotFinite),
        Value::Float(f) => f,
        Value::Int(i) => i as f64,
        _ => return plain(value),
    };
    let (lo, hi) = (tag.clamp_min.unwrap_or(f64::NEG_INFINITY), tag.clamp_max.unwrap_or(f64::INFINITY));
    if number < lo || number > hi {
        let limit = number.clamp(lo, hi);
        let value = match value {
            Value::Int(_) if limit.fract() == 0.0 => Value::Int(limit as i64),
            _ => Value::Float(limit),
        };
        return Ok(Decoded { value, clamped_from: Some(number) });
    }
    plain(value)
}

/// Decodes one bit of a coil or discrete table.
pub fn decode_bit(bit: bool) -> Value {
    Value::Bool(bit)
}

enum Raw {
    Int(i128),
    Float(f64),
}

fn scale(raw: Raw, tag: &ModbusTag) -> Value {
    match raw {
        Raw::Int(i) if tag.is_unscaled() => match i64::try_from(i) {
            Ok(i) => Value::Int(i),
            Err(_) => Value::Float(i as f64),
        },
        Raw::Int(i) => Value::Float(round_significant(i as f64 * tag.scale + tag.offset)),
        Raw::Float(f) if tag.is_unscaled() => Value::Float(f),
        Raw::Float(f) => Value::Float(round_significant(f * tag.scale + tag.offset)),
    }
}

/// Rounds to 12 significant digits, removing binary noise from scaling
/// (`3084 × 0.1` reads `308.4`, not `308.40000000000003`). 16- and 32-bit registers
/// carry at most 10 significant digits, so nothing real is lost for them.
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
    use crate::config::TagConfig;
    use crate::modbus::types::Table;

    fn tag(data_type: DataType, byte_order: ByteOrder) -> ModbusTag {
        let cfg =
            TagConfig { name: "t".into(), table: Some(Table::Holding), data_type: Some(data_type), byte_order, ..TagConfig::default() };
        ModbusTag::build(&cfg, 0).unwrap()
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
        // 0.3f32 is 0x3E99999A big-endian; widened naively it is 0.30000001192092896.
        let cases = [
            (ByteOrder::ABCD, [0x3E99, 0x999A]),
            (ByteOrder::CDAB, [0x999A, 0x3E99]),
            (ByteOrder::BADC, [0x993E, 0x9A99]),
            (ByteOrder::DCBA, [0x9A99, 0x993E]),
        ];
        for (order, regs) in cases {
            let v = decode_registers(&regs, &tag(DataType::F32, order)).unwrap();
            assert_eq!(v, Value::Float(0.3), "byte order {order:?}");
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
        assert_eq!(decode_registers(&[0xFF9C], &t).unwrap(), Value::Float(-60.0));
        // -100 * 0.5 - 10
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
        assert_eq!(decode_registers(&[0x7FC0, 0x0000], &tag(DataType::F32, ByteOrder::ABCD)), Err(DecodeError::NotFinite));
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
        assert_eq!(decode_registers(&[0x0001], &tag(DataType::U32, ByteOrder::ABCD)), Err(DecodeError::WrongLength { needed: 2, got: 1 }));
    }

    #[test]
    fn encode_then_decode_round_trips_for_every_type_and_order() {
        let values = [
            (DataType::U16, 65_000.0),
            (DataType::I16, -32_000.0),
            (DataType::U32, 4_000_000_000.0),
            (DataType::I32, -2_000_000_000.0),
            (DataType::F32, -1234.5),
        ];
        for order in [ByteOrder::ABCD, ByteOrder::CDAB, ByteOrder::BADC, ByteOrder::DCBA] {
            for (dt, v) in values {
                let regs = encode_registers(v, dt, order);
                let got = decode_registers(&regs, &tag(dt, order)).unwrap();
                let got = match got {
                    Value::Int(i) => i as f64,
                    Value::Float(f) => f,
                    other => panic!("{other:?}"),
                };
                assert_eq!(got, v, "{dt:?} {order:?}");
            }
        }
    }
}
