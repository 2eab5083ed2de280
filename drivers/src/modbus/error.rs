//! Why a Modbus device gave no usable answer, as types. tokio-modbus tells transport
//! errors (`Err`) apart from the device's exceptions (`Ok(Err(ExceptionCode))`); so do
//! these: a [`ConnectError`] or a [`TransportError`] means the connection is rebuilt, an
//! exception ([`ModbusError::Exception`]) means the device answered and refused.
//!
//! `Display` gives the sentence the operator sees (a tag's bad reason, a device's
//! `device_lost` reason and its line on the status page); the agent turns the error into
//! text only there.

use std::time::Duration;

use tokio_modbus::ExceptionCode;

use crate::modbus::types::Table;
use crate::modbus::write::WriteError;

/// Why a device's link is not usable as configured (validation prevents all of them).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    #[error("no address")]
    NoAddress,
    #[error("{0:?} is not an IP address and port")]
    BadAddress(String),
    #[error("no [devices.serial] settings")]
    NoSerial,
    #[error("an OPC-UA device has no Modbus link")]
    NotModbus,
}

/// Why a connection could not be opened (or made ready) to a bus.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect failed: {0}")]
    Connect(std::io::Error),
    #[error("connect timed out after {0:?}")]
    Timeout(Duration),
    #[error("cannot open serial port {port}: {source}")]
    Serial { port: String, source: tokio_serial::Error },
    /// An RTU line kept talking while it was drained of a late reply.
    #[error("the line did not fall silent for {quiet:?} within {limit:?}")]
    NotSilent { quiet: Duration, limit: Duration },
    #[error("the connection was closed")]
    Closed,
    #[error("read failed while waiting for the line to fall silent: {0}")]
    Drain(std::io::Error),
}

/// Why a request got no usable answer: the connection must be rebuilt.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    /// A reply of another size than asked for: on an RTU line, most likely the late
    /// reply to an earlier request.
    #[error("the reply held {got} items where {asked} were asked for")]
    Mismatch { asked: u16, got: usize },
    #[error("the device closed the connection")]
    Closed,
    #[error("{0}")]
    Io(tokio_modbus::Error),
}

impl From<tokio_modbus::Error> for TransportError {
    /// tokio-modbus reports a connection the device closed as an I/O error "Success (os
    /// error 0)" or an unexpected EOF; say what happened instead.
    fn from(e: tokio_modbus::Error) -> Self {
        match &e {
            tokio_modbus::Error::Transport(io)
                if io.raw_os_error() == Some(0)
                    || matches!(
                        io.kind(),
                        std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
                    ) =>
            {
                TransportError::Closed
            }
            _ => TransportError::Io(e),
        }
    }
}

/// Why a device's tags are bad, or why it is lost.
#[derive(Debug, thiserror::Error)]
pub enum ModbusError {
    /// No connection to the bus.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// A read got no usable answer.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// A write got no usable answer (the connection is rebuilt).
    #[error("write failed: {0}")]
    Write(WriteError),
    /// The device answered a read with an exception (the connection stays up).
    #[error("modbus exception {exception} (0x{:02X}) reading {} {start}+{count}", u8::from(*.exception), .table.as_str())]
    Exception { exception: ExceptionCode, table: Table, start: u16, count: u16 },
    /// The device failed `failures` polls in a row and is backed off; `cause` is the last.
    #[error("{cause}; backed off after {failures} failed polls")]
    BackedOff { cause: Box<ModbusError>, failures: u32 },
}

impl ModbusError {
    /// Whether the device did not answer in time (a timeout, at connect or on a request).
    pub fn is_timeout(&self) -> bool {
        match self {
            ModbusError::Connect(ConnectError::Timeout(_)) | ModbusError::Transport(TransportError::Timeout(_)) => true,
            ModbusError::Write(e) => matches!(e, WriteError::Timeout(_)),
            ModbusError::BackedOff { cause, .. } => cause.is_timeout(),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_reads_as_the_sentence_the_operator_saw_before_it_was_typed() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let cases: Vec<(ModbusError, String)> = vec![
            (
                ConnectError::Connect(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)).into(),
                format!("connect failed: {refused}"),
            ),
            (ConnectError::Timeout(Duration::from_millis(1500)).into(), "connect timed out after 1.5s".into()),
            (
                ConnectError::NotSilent { quiet: Duration::from_millis(50), limit: Duration::from_millis(500) }.into(),
                "the line did not fall silent for 50ms within 500ms".into(),
            ),
            (ConnectError::Closed.into(), "the connection was closed".into()),
            (TransportError::Timeout(Duration::from_secs(1)).into(), "no reply within 1s".into()),
            (TransportError::Mismatch { asked: 4, got: 2 }.into(), "the reply held 2 items where 4 were asked for".into()),
            (TransportError::Closed.into(), "the device closed the connection".into()),
            (
                ModbusError::Exception { exception: ExceptionCode::IllegalDataAddress, table: Table::Holding, start: 100, count: 4 },
                format!("modbus exception {} (0x02) reading holding 100+4", ExceptionCode::IllegalDataAddress),
            ),
            (
                ModbusError::Write(WriteError::Timeout(Duration::from_secs(1))),
                "write failed: no reply to the write within 1s; the connection is rebuilt".into(),
            ),
            (
                ModbusError::BackedOff { cause: Box::new(TransportError::Timeout(Duration::from_secs(1)).into()), failures: 3 },
                "no reply within 1s; backed off after 3 failed polls".into(),
            ),
        ];
        for (error, sentence) in cases {
            assert_eq!(error.to_string(), sentence, "{error:?}");
        }
    }

    #[test]
    fn a_timeout_is_told_apart_from_other_failures_whatever_wraps_it() {
        let timeout = ModbusError::from(TransportError::Timeout(Duration::from_secs(1)));
        assert!(timeout.is_timeout());
        assert!(ModbusError::BackedOff { cause: Box::new(timeout), failures: 3 }.is_timeout());
        assert!(ModbusError::from(ConnectError::Timeout(Duration::from_secs(1))).is_timeout());
        assert!(!ModbusError::from(TransportError::Closed).is_timeout());
        let exception = ModbusError::Exception { exception: ExceptionCode::IllegalFunction, table: Table::Coil, start: 0, count: 1 };
        assert!(!exception.is_timeout());
    }
}
