//! Writing one tag: an engineering value turned into the Modbus request that puts it in
//! the device (pure, unit-tested), and the request queue of a device task.
//!
//! The device task owns the connection, so writes travel to it over a channel
//! ([`write_channel`]) and are executed between two polls. Only holding registers
//! (function code 6 for one register, 16 for several) and coils (function code 5) can be
//! written; `write_multiple_only` devices get 15/16 always. A bit of a register is
//! written by read-modify-write. Every write is then read back and compared, so "done"
//! means the device holds the value.
//!
//! **Inverse scaling.** A tag reads as `engineering = raw × scale + offset`, so a write
//! sends `raw = (engineering − offset) / scale`. For integer types the raw value must be
//! a whole number (within a relative 1e-9, which absorbs binary noise such as
//! `308.4 / 0.1 = 3083.9999999999995`) and must fit the type; an `f32` must fit an `f32`
//! (its precision is what it is).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, Mutex};
use tokio::time::timeout;
use tokio_modbus::client::{Context, Reader, Writer};
use tokio_modbus::ExceptionCode;
use tracing::{info, warn};

use crate::modbus::decode::{encode_registers, encode_string, from_big_endian};
use crate::modbus::device::{ModbusDevice, ModbusTag};
use crate::modbus::types::{DataType, Table};
use crate::sample::{DriverStats, Value};

/// Largest distance of a raw integer from a whole number still taken as that number,
/// relative to its size.
const INTEGER_TOLERANCE: f64 = 1e-9;

/// One write for a device task: put `value` (engineering units) into `tag`, then answer
/// on `reply`.
#[derive(Debug)]
pub struct WriteRequest {
    pub tag: String,
    pub value: Value,
    pub reply: oneshot::Sender<Result<(), WriteError>>,
}

/// Why a write did not happen (or may not have).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WriteError {
    /// The device task has no connection right now; nothing was sent.
    #[error("the device is not connected")]
    NotConnected,
    /// The device answered with a Modbus exception; the connection stays up.
    #[error("the device refused the write: modbus exception {} (0x{:02X})", .0, u8::from(*.0))]
    Exception(ExceptionCode),
    /// No reply in time: the write may or may not have happened; the connection is rebuilt.
    #[error("no reply to the write within {0:?}; the connection is rebuilt")]
    Timeout(Duration),
    /// The connection failed during the write; the connection is rebuilt.
    #[error("the connection failed during the write: {0}")]
    Transport(String),
    /// The write was accepted but reading the value back gave something else (the PLC
    /// may override it, or the register is not what the config says).
    #[error("the write was not confirmed: {0}")]
    NotConfirmed(String),
    /// The device refused the write with the status it names (OPC-UA `BadNotWritable`,
    /// `BadTypeMismatch`, `BadUserAccessDenied`…); the connection stays up.
    #[error("the device refused the write: {0}")]
    Refused(String),
    /// The value cannot be written to that node (wrong kind, out of range, node not
    /// resolved); nothing was sent.
    #[error("{0}")]
    NotSent(String),
    /// The device has no tag by that name.
    #[error("the device has no tag {0:?}")]
    UnknownTag(String),
    /// The value cannot be written to that tag; nothing was sent.
    #[error("{0}")]
    Encode(#[from] EncodeError),
}

/// Why an engineering value cannot be turned into a write for a tag.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EncodeError {
    #[error("the tag has no Modbus table and address")]
    NotModbus,
    #[error("{0} tags are read-only: only holding registers and coils can be written")]
    ReadOnly(&'static str),
    #[error("the tag is a bool: the value must be true or false")]
    ExpectedBool,
    #[error("the tag is numeric ({0}): the value must be a number")]
    ExpectedNumber(&'static str),
    #[error("the tag is a string: the value must be text")]
    ExpectedText,
    #[error("the text is {len} characters long; the tag holds at most {max}")]
    TextTooLong { len: usize, max: usize },
    #[error("the text holds characters other than ASCII")]
    NotAscii,
    #[error("the value is not a finite number")]
    NotFinite,
    #[error("raw value {} ((value - offset) / scale) is not a whole number, but the tag is {data_type}", readable(*.raw))]
    NotInteger { raw: f64, data_type: &'static str },
    #[error("raw value {} ((value - offset) / scale) is outside the range of {data_type} ({min} to {max})", readable(*.raw))]
    OutOfRange { raw: f64, data_type: &'static str, min: f64, max: f64 },
}

/// `x` to 12 significant digits, without the binary noise of the division
/// (`3084.4999999999995` shows as `3084.5`).
fn readable(x: f64) -> f64 {
    format!("{x:.11e}").parse().unwrap_or(x)
}

/// One Modbus write request, ready to send. Addresses are protocol addresses (0-based).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOp {
    /// Function code 5: write single coil.
    Coil { address: u16, value: bool },
    /// Function code 6: write single register.
    Register { address: u16, word: u16 },
    /// Function code 16: write multiple registers.
    Registers { address: u16, words: Vec<u16> },
    /// One bit of a holding register: the register is read (function code 3), the bit
    /// changed, and the register written back (function code 6).
    Bit { address: u16, bit: u8, value: bool },
}

/// The raw value of `tag` for the engineering value `value`: inverse scaling, checked
/// against the tag's type (see the module notes). Integers come back whole.
pub fn inverse_scale(tag: &ModbusTag, value: f64) -> Result<f64, EncodeError> {
    let data_type = tag.data_type;
    if !value.is_finite() {
        return Err(EncodeError::NotFinite);
    }
    let raw = if tag.is_unscaled() { value } else { (value - tag.offset) / tag.scale };
    let (min, max) = match data_type {
        DataType::Bool => return Err(EncodeError::ExpectedBool),
        DataType::String => return Err(EncodeError::ExpectedText),
        DataType::U16 => (0.0, f64::from(u16::MAX)),
        DataType::I16 => (f64::from(i16::MIN), f64::from(i16::MAX)),
        DataType::U32 => (0.0, f64::from(u32::MAX)),
        DataType::I32 => (f64::from(i32::MIN), f64::from(i32::MAX)),
        DataType::U64 => (0.0, u64::MAX as f64),
        DataType::I64 => (i64::MIN as f64, i64::MAX as f64),
        DataType::F32 => (-f64::from(f32::MAX), f64::from(f32::MAX)),
        DataType::F64 => (-f64::MAX, f64::MAX),
    };
    let name = data_type.as_str();
    if !raw.is_finite() {
        return Err(EncodeError::OutOfRange { raw, data_type: name, min, max });
    }
    let raw = if matches!(data_type, DataType::F32 | DataType::F64) {
        raw
    } else {
        let whole = raw.round();
        if (raw - whole).abs() > INTEGER_TOLERANCE * whole.abs().max(1.0) {
            return Err(EncodeError::NotInteger { raw, data_type: name });
        }
        whole
    };
    if raw < min || raw > max {
        return Err(EncodeError::OutOfRange { raw, data_type: name, min, max });
    }
    Ok(raw)
}

/// The request that writes `value` (engineering units) into `tag`.
pub fn encode_write(tag: &ModbusTag, value: &Value) -> Result<WriteOp, EncodeError> {
    let address = tag.start;
    let data_type = tag.data_type;
    match tag.table {
        table @ (Table::Input | Table::Discrete) => Err(EncodeError::ReadOnly(table.as_str())),
        Table::Coil => match value {
            Value::Bool(b) => Ok(WriteOp::Coil { address, value: *b }),
            _ => Err(EncodeError::ExpectedBool),
        },
        Table::Holding => {
            let words = match (data_type, value) {
                (DataType::Bool, Value::Bool(b)) => {
                    return Ok(WriteOp::Bit { address, bit: tag.bit.unwrap_or(0), value: *b });
                }
                (DataType::Bool, _) => return Err(EncodeError::ExpectedBool),
                (DataType::String, Value::Text(text)) => {
                    let max = usize::from(tag.register_count()) * 2;
                    if !text.is_ascii() {
                        return Err(EncodeError::NotAscii);
                    }
                    if text.len() > max {
                        return Err(EncodeError::TextTooLong { len: text.len(), max });
                    }
                    encode_string(text, tag.register_count(), tag.byte_swap)
                }
                (DataType::String, _) => return Err(EncodeError::ExpectedText),
                // 64-bit integers are exact when written unscaled as integers.
                (DataType::I64, Value::Int(i)) if tag.is_unscaled() => from_big_endian(&i.to_be_bytes(), tag.byte_order),
                (DataType::U64, Value::Int(i)) if tag.is_unscaled() && *i >= 0 => {
                    from_big_endian(&(*i as u64).to_be_bytes(), tag.byte_order)
                }
                (_, Value::Int(i)) => encode_registers(inverse_scale(tag, *i as f64)?, data_type, tag.byte_order),
                (_, Value::Float(f)) => encode_registers(inverse_scale(tag, *f)?, data_type, tag.byte_order),
                (_, Value::Bool(_) | Value::Text(_)) => return Err(EncodeError::ExpectedNumber(data_type.as_str())),
            };
            Ok(match words.as_slice() {
                [word] => WriteOp::Register { address, word: *word },
                _ => WriteOp::Registers { address, words },
            })
        }
    }
}

/// The receiving end of a device's write queue, held by the device task.
///
/// It is shared (and cloneable) so that a device task restarted by its supervisor picks
/// up the same queue; one task holds it at a time.
#[derive(Debug, Clone)]
pub struct WriteInbox(Arc<Mutex<mpsc::Receiver<WriteRequest>>>);

impl WriteInbox {
    pub(crate) fn receiver(&self) -> &Mutex<mpsc::Receiver<WriteRequest>> {
        &self.0
    }
}

/// A device's write queue: the sender goes to whoever issues writes (the command
/// handler), the inbox to the device task ([`crate::modbus::run_device`]).
pub fn write_channel(capacity: usize) -> (mpsc::Sender<WriteRequest>, WriteInbox) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    (tx, WriteInbox(Arc::new(Mutex::new(rx))))
}

/// What the device task does after a write.
pub(crate) enum WriteEnd {
    /// Answered; the connection is fine.
    Done,
    /// The connection failed during the write and must be rebuilt (why).
    Transport(WriteError),
}

/// Executes `req` on the connection `ctx` of `device` and answers it: the write, then a
/// read of the same registers (or coil) to confirm the device holds what was written.
/// Each call is bounded by the device's `timeout`; `stats` counts every request.
pub(crate) async fn execute(ctx: &mut Context, device: &ModbusDevice, req: WriteRequest, stats: &mut DriverStats) -> WriteEnd {
    if req.reply.is_closed() {
        // Whoever asked gave up waiting (and told the ERP so): a late write would surprise.
        warn!(device = %device.name, tag = %req.tag, "write dropped: its requester stopped waiting");
        return WriteEnd::Done;
    }
    let Some(tag) = device.tags.iter().find(|t| t.name == req.tag) else {
        let _ = req.reply.send(Err(WriteError::UnknownTag(req.tag.clone())));
        return WriteEnd::Done;
    };
    let op = match encode_write(tag, &req.value) {
        Ok(op) => op,
        Err(e) => {
            let _ = req.reply.send(Err(e.into()));
            return WriteEnd::Done;
        }
    };
    let limit = device.timeout;
    let multiple = device.write_multiple_only;
    let written = match &op {
        WriteOp::Coil { address, value } if multiple => call(stats, limit, ctx.write_multiple_coils(*address, &[*value])).await,
        WriteOp::Coil { address, value } => call(stats, limit, ctx.write_single_coil(*address, *value)).await,
        WriteOp::Register { address, word } if multiple => call(stats, limit, ctx.write_multiple_registers(*address, &[*word])).await,
        WriteOp::Register { address, word } => call(stats, limit, ctx.write_single_register(*address, *word)).await,
        WriteOp::Registers { address, words } => call(stats, limit, ctx.write_multiple_registers(*address, words)).await,
        WriteOp::Bit { address, bit, value } => {
            // Read-modify-write: the other 15 bits are written back as read.
            let mask = 1u16.checked_shl(u32::from(*bit)).unwrap_or(0);
            match call(stats, limit, ctx.read_holding_registers(*address, 1)).await {
                Ok(words) => {
                    let old = words.first().copied().unwrap_or(0);
                    let new = if *value { old | mask } else { old & !mask };
                    if multiple {
                        call(stats, limit, ctx.write_multiple_registers(*address, &[new])).await
                    } else {
                        call(stats, limit, ctx.write_single_register(*address, new)).await
                    }
                }
                Err(e) => Err(e),
            }
        }
    };
    let confirmed = match written {
        Ok(()) => confirm(ctx, &op, stats, limit).await,
        Err(e) => Err(e),
    };
    let (result, end) = match confirmed {
        Ok(()) => {
            info!(device = %device.name, tag = %tag.name, value = ?req.value, ?op, "write done and read back");
            (Ok(()), WriteEnd::Done)
        }
        Err(e @ (WriteError::Exception(_) | WriteError::NotConfirmed(_))) => {
            warn!(device = %device.name, tag = %tag.name, error = %e, "write failed");
            (Err(e), WriteEnd::Done)
        }
        Err(e) => (Err(e.clone()), WriteEnd::Transport(e)),
    };
    let _ = req.reply.send(result);
    end
}

/// Reads back what `op` wrote and compares.
async fn confirm(ctx: &mut Context, op: &WriteOp, stats: &mut DriverStats, limit: Duration) -> Result<(), WriteError> {
    match op {
        WriteOp::Coil { address, value } => {
            let bits = call(stats, limit, ctx.read_coils(*address, 1)).await?;
            match bits.first() {
                Some(b) if b == value => Ok(()),
                other => Err(WriteError::NotConfirmed(format!("wrote coil {address} = {value}, read back {other:?}"))),
            }
        }
        WriteOp::Register { address, word } => {
            compare(*address, &[*word], call(stats, limit, ctx.read_holding_registers(*address, 1)).await?)
        }
        WriteOp::Registers { address, words } => {
            let n = u16::try_from(words.len()).unwrap_or(u16::MAX);
            compare(*address, words, call(stats, limit, ctx.read_holding_registers(*address, n)).await?)
        }
        WriteOp::Bit { address, bit, value } => {
            let words = call(stats, limit, ctx.read_holding_registers(*address, 1)).await?;
            let got = words.first().map(|w| (w >> bit) & 1 == 1);
            if got == Some(*value) {
                Ok(())
            } else {
                Err(WriteError::NotConfirmed(format!("wrote bit {bit} of register {address} = {value}, read back {got:?}")))
            }
        }
    }
}

fn compare(address: u16, wrote: &[u16], read: Vec<u16>) -> Result<(), WriteError> {
    if read == wrote {
        Ok(())
    } else {
        Err(WriteError::NotConfirmed(format!("wrote registers {address}.. = {wrote:04X?}, read back {read:04X?}")))
    }
}

/// One request under the time limit, counted; exceptions and transport failures told
/// apart.
async fn call<T>(
    stats: &mut DriverStats,
    limit: Duration,
    fut: impl std::future::Future<Output = tokio_modbus::Result<T>>,
) -> Result<T, WriteError> {
    stats.requests += 1;
    let started = std::time::Instant::now();
    match timeout(limit, fut).await {
        Ok(Ok(Ok(v))) => {
            stats.last_latency_ms = Some(started.elapsed().as_secs_f64() * 1000.0);
            Ok(v)
        }
        Ok(Ok(Err(exception))) => {
            stats.exceptions += 1;
            Err(WriteError::Exception(exception))
        }
        Ok(Err(e)) => {
            stats.transport_errors += 1;
            Err(WriteError::Transport(e.to_string()))
        }
        Err(_) => {
            stats.timeouts += 1;
            Err(WriteError::Timeout(limit))
        }
    }
}

/// Answers `req` with [`WriteError::NotConnected`] (the task is between connections).
pub(crate) fn refuse_not_connected(req: WriteRequest) {
    let _ = req.reply.send(Err(WriteError::NotConnected));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TagConfig;
    use crate::modbus::decode::decode_registers;
    use crate::modbus::types::ByteOrder;

    fn tag(table: Table, data_type: DataType, scale: f64, offset: f64) -> ModbusTag {
        built(tag_config(table, data_type, scale, offset), 0)
    }

    fn built(tag: TagConfig, address_base: u8) -> ModbusTag {
        ModbusTag::build(&tag, address_base).unwrap()
    }

    fn tag_config(table: Table, data_type: DataType, scale: f64, offset: f64) -> TagConfig {
        TagConfig {
            name: "t".into(),
            table: Some(table),
            address: Some(10),
            data_type: Some(data_type),
            byte_order: ByteOrder::ABCD,
            scale,
            offset,
            unit: None,
            description: None,
            ..TagConfig::default()
        }
    }

    #[test]
    fn a_scaled_u16_is_written_as_the_raw_register_a_read_would_decode() {
        let t = tag(Table::Holding, DataType::U16, 0.1, 0.0);
        let op = encode_write(&t, &Value::Float(308.4)).unwrap();
        assert_eq!(op, WriteOp::Register { address: 10, word: 3084 });
        assert_eq!(decode_registers(&[3084], &t).unwrap(), Value::Float(308.4));
    }

    #[test]
    fn offset_and_scale_are_undone_in_that_order() {
        let t = tag(Table::Holding, DataType::I16, 0.5, -10.0);
        // -60 = raw × 0.5 − 10 → raw = -100
        assert_eq!(inverse_scale(&t, -60.0).unwrap(), -100.0);
        let op = encode_write(&t, &Value::Int(-60)).unwrap();
        assert_eq!(op, WriteOp::Register { address: 10, word: 0xFF9C });
    }

    #[test]
    fn a_32_bit_value_uses_function_16_in_the_tags_byte_order() {
        let mut t = tag(Table::Holding, DataType::F32, 1.0, 0.0);
        t.byte_order = ByteOrder::CDAB;
        // 1234.5f32 = 0x449A5000; CDAB puts the low word first.
        let op = encode_write(&t, &Value::Float(1234.5)).unwrap();
        assert_eq!(op, WriteOp::Registers { address: 10, words: vec![0x5000, 0x449A] });
        t.data_type = DataType::U32;
        t.byte_order = ByteOrder::BADC;
        let op = encode_write(&t, &Value::Int(0x1234_5678)).unwrap();
        assert_eq!(op, WriteOp::Registers { address: 10, words: vec![0x3412, 0x7856] });
    }

    #[test]
    fn writes_round_trip_through_decoding_for_every_type_and_order() {
        let cases = [
            (DataType::U16, 0.1, 5.0, 1234.5),
            (DataType::I16, 0.01, 0.0, -123.45),
            (DataType::U32, 0.001, 0.0, 4_000_000.123),
            (DataType::I32, 2.0, 100.0, -2_000_000.0),
            (DataType::F32, 1.0, 0.0, -1234.5),
        ];
        for order in [ByteOrder::ABCD, ByteOrder::CDAB, ByteOrder::BADC, ByteOrder::DCBA] {
            for (dt, scale, offset, value) in cases {
                let mut t = tag(Table::Holding, dt, scale, offset);
                t.byte_order = order;
                let words = match encode_write(&t, &Value::Float(value)).unwrap() {
                    WriteOp::Register { word, .. } => vec![word],
                    WriteOp::Registers { words, .. } => words,
                    other => panic!("{other:?}"),
                };
                let back = match decode_registers(&words, &t).unwrap() {
                    Value::Int(i) => i as f64,
                    Value::Float(f) => f,
                    other => panic!("{other:?}"),
                };
                assert_eq!(back, value, "{dt:?} {order:?}");
            }
        }
    }

    #[test]
    fn a_coil_takes_a_bool_and_function_5() {
        let t = built(tag_config(Table::Coil, DataType::Bool, 1.0, 0.0), 1);
        assert_eq!(encode_write(&t, &Value::Bool(true)).unwrap(), WriteOp::Coil { address: 9, value: true });
        assert_eq!(encode_write(&t, &Value::Int(1)), Err(EncodeError::ExpectedBool));
    }

    #[test]
    fn read_only_tables_cannot_be_written() {
        let t = tag(Table::Input, DataType::U16, 1.0, 0.0);
        assert_eq!(encode_write(&t, &Value::Int(1)), Err(EncodeError::ReadOnly("input")));
        let t = tag(Table::Discrete, DataType::Bool, 1.0, 0.0);
        assert_eq!(encode_write(&t, &Value::Bool(true)), Err(EncodeError::ReadOnly("discrete")));
    }

    #[test]
    fn a_register_refuses_a_bool_or_text() {
        let t = tag(Table::Holding, DataType::U16, 1.0, 0.0);
        assert_eq!(encode_write(&t, &Value::Bool(true)), Err(EncodeError::ExpectedNumber("u16")));
        assert_eq!(encode_write(&t, &Value::Text("1".into())), Err(EncodeError::ExpectedNumber("u16")));
    }

    #[test]
    fn values_outside_the_type_are_refused_not_wrapped() {
        let u16_tag = tag(Table::Holding, DataType::U16, 1.0, 0.0);
        assert!(matches!(inverse_scale(&u16_tag, 65_536.0), Err(EncodeError::OutOfRange { .. })));
        assert!(matches!(inverse_scale(&u16_tag, -1.0), Err(EncodeError::OutOfRange { .. })));
        assert_eq!(inverse_scale(&u16_tag, 65_535.0).unwrap(), 65_535.0);
        let i16_tag = tag(Table::Holding, DataType::I16, 1.0, 0.0);
        assert!(matches!(inverse_scale(&i16_tag, 32_768.0), Err(EncodeError::OutOfRange { .. })));
        assert_eq!(inverse_scale(&i16_tag, -32_768.0).unwrap(), -32_768.0);
        // Scaling moves the limits: 0.1 × 65535 = 6553.5 is the largest u16 at scale 0.1.
        let tenths = tag(Table::Holding, DataType::U16, 0.1, 0.0);
        assert!(inverse_scale(&tenths, 6553.5).is_ok());
        assert!(matches!(inverse_scale(&tenths, 6553.6), Err(EncodeError::OutOfRange { .. })));
        let f = tag(Table::Holding, DataType::F32, 1.0, 0.0);
        assert!(matches!(inverse_scale(&f, 1e39), Err(EncodeError::OutOfRange { .. })));
        assert_eq!(inverse_scale(&f, f64::NAN), Err(EncodeError::NotFinite));
    }

    #[test]
    fn a_value_between_two_raw_steps_is_refused() {
        let tenths = tag(Table::Holding, DataType::U16, 0.1, 0.0);
        assert!(matches!(inverse_scale(&tenths, 308.45), Err(EncodeError::NotInteger { .. })));
        let plain = tag(Table::Holding, DataType::I32, 1.0, 0.0);
        assert!(matches!(inverse_scale(&plain, 1.5), Err(EncodeError::NotInteger { .. })));
        // Binary noise of the division is not a fraction.
        assert_eq!(inverse_scale(&tenths, 0.3).unwrap(), 3.0);
    }

    #[test]
    fn error_messages_name_the_raw_value_and_the_type() {
        let tenths = tag(Table::Holding, DataType::U16, 0.1, 0.0);
        let msg = inverse_scale(&tenths, 7000.0).unwrap_err().to_string();
        assert!(msg.contains("70000") && msg.contains("u16") && msg.contains("65535"), "{msg}");
        let e = WriteError::Exception(ExceptionCode::IllegalDataAddress).to_string();
        assert!(e.contains("0x02"), "{e}");
    }
}
