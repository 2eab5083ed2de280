//! The three ways to reach a Modbus device, each giving a tokio-modbus [`Context`]:
//! TCP (MBAP framing, transaction ids), RTU over a serial port, and RTU frames over a
//! TCP socket (serial-to-Ethernet converters).
//!
//! tokio-modbus has no timeouts of its own: every connect here is bounded by the caller's
//! limit, and every request by the poller. An RTU line can be drained of a late reply
//! before it is used again (see [`Link::connect`]).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};
use tokio_modbus::client::Context;
use tokio_modbus::Slave;
use tokio_serial::SerialPortBuilderExt;
use tracing::debug;

use crate::config::{DeviceConfig, Protocol};
use crate::modbus::config::{Parity, SerialConfig};
use crate::modbus::error::{ConnectError, LinkError};

/// Where a bus is, and how frames are carried.
#[derive(Debug, Clone, PartialEq)]
pub enum Link {
    Tcp(SocketAddr),
    RtuOverTcp(SocketAddr),
    Serial(SerialConfig),
}

impl Link {
    /// The link of `device`; an error names what is missing (validation prevents it).
    pub fn of(device: &DeviceConfig) -> Result<Self, LinkError> {
        let addr = || -> Result<SocketAddr, LinkError> {
            let a = device.address.as_deref().ok_or(LinkError::NoAddress)?;
            a.parse().map_err(|_| LinkError::BadAddress(a.to_string()))
        };
        match device.protocol {
            Protocol::ModbusTcp => Ok(Link::Tcp(addr()?)),
            Protocol::ModbusRtuOverTcp => Ok(Link::RtuOverTcp(addr()?)),
            Protocol::ModbusRtu => device.serial.clone().map(Link::Serial).ok_or(LinkError::NoSerial),
            Protocol::Opcua => Err(LinkError::NotModbus),
        }
    }

    /// Whether every unit on this link sees every frame (a late reply can arrive during
    /// the next request even when that request goes to another unit).
    pub fn is_shared_line(&self) -> bool {
        !matches!(self, Link::Tcp(_))
    }

    pub fn describe(&self) -> String {
        match self {
            Link::Tcp(a) => format!("tcp {a}"),
            Link::RtuOverTcp(a) => format!("rtu over tcp {a}"),
            Link::Serial(s) => format!("rtu {}", s.describe()),
        }
    }

    /// Opens the connection, addressed to `unit` until told otherwise (`set_slave`).
    ///
    /// With `drain`, an RTU line (serial, or through a converter) is first listened to
    /// until it has been silent for that long, and what arrives meanwhile is thrown away.
    /// RTU frames carry no transaction id: after a timeout, the reply a slow device still
    /// sends would otherwise be read as the answer to the next request of the same size
    /// (a serial port, and most converters, pass it on to the new connection too).
    pub async fn connect(&self, unit: u8, limit: Duration, drain: Option<Duration>) -> Result<Context, ConnectError> {
        match self {
            Link::Tcp(addr) => match timeout(limit, tokio_modbus::client::tcp::connect_slave(*addr, Slave(unit))).await {
                Ok(Ok(ctx)) => Ok(ctx),
                Ok(Err(e)) => Err(ConnectError::Connect(e)),
                Err(_) => Err(ConnectError::Timeout(limit)),
            },
            Link::RtuOverTcp(addr) => match timeout(limit, TcpStream::connect(*addr)).await {
                Ok(Ok(mut stream)) => {
                    let _ = stream.set_nodelay(true);
                    if let Some(quiet) = drain {
                        drain_line(&mut stream, quiet).await?;
                    }
                    Ok(tokio_modbus::client::rtu::attach_slave(stream, Slave(unit)))
                }
                Ok(Err(e)) => Err(ConnectError::Connect(e)),
                Err(_) => Err(ConnectError::Timeout(limit)),
            },
            Link::Serial(s) => {
                let mut stream = open_serial(s).map_err(|source| ConnectError::Serial { port: s.port.clone(), source })?;
                if let Some(quiet) = drain {
                    drain_line(&mut stream, quiet).await?;
                }
                Ok(tokio_modbus::client::rtu::attach_slave(stream, Slave(unit)))
            }
        }
    }
}

/// Reads and discards until nothing has arrived for `quiet`, for at most ten times that
/// (a line that never falls silent is reported, not waited on forever).
async fn drain_line(stream: &mut (impl AsyncRead + Unpin), quiet: Duration) -> Result<usize, ConnectError> {
    let deadline = Instant::now() + quiet * 10;
    let mut buf = [0u8; 256];
    let mut dropped = 0;
    loop {
        if Instant::now() >= deadline {
            return Err(ConnectError::NotSilent { quiet, limit: quiet * 10 });
        }
        match timeout(quiet, stream.read(&mut buf)).await {
            Err(_) => {
                if dropped > 0 {
                    debug!(bytes = dropped, "discarded a late reply before the next request");
                }
                return Ok(dropped);
            }
            Ok(Ok(0)) => return Err(ConnectError::Closed),
            Ok(Ok(n)) => dropped += n,
            Ok(Err(e)) => return Err(ConnectError::Drain(e)),
        }
    }
}

/// Opens a serial port with the line settings of `s`, no flow control.
pub fn open_serial(s: &SerialConfig) -> tokio_serial::Result<tokio_serial::SerialStream> {
    let parity = match s.parity {
        Parity::None => tokio_serial::Parity::None,
        Parity::Even => tokio_serial::Parity::Even,
        Parity::Odd => tokio_serial::Parity::Odd,
    };
    let data_bits = if s.data_bits == 7 { tokio_serial::DataBits::Seven } else { tokio_serial::DataBits::Eight };
    let stop_bits = if s.stop_bits == 2 { tokio_serial::StopBits::Two } else { tokio_serial::StopBits::One };
    tokio_serial::new(s.port.as_str(), s.baud_rate)
        .parity(parity)
        .data_bits(data_bits)
        .stop_bits(stop_bits)
        .flow_control(tokio_serial::FlowControl::None)
        .open_native_async()
}
