//! Modbus client driver: TCP, RTU over a serial line, RTU over TCP.
//!
//! - [`config`]: the Modbus keys of a device (serial line, limits) and their checks.
//! - [`types`]: register tables, data types, byte orders.
//! - [`device`]: the built device and tags the driver runs on, every default resolved.
//! - [`decode`]: registers → engineering values and back (pure, unit-tested).
//! - [`plan`]: merges tags into as few requests as possible; splits refused ones.
//! - [`transport`]: opens a TCP, serial or RTU-over-TCP connection.
//! - [`error`]: why a device gave no usable answer (connect, transport, exception).
//! - [`breaker`]: backs off a device that stopped answering.
//! - [`deadband`]: report-by-exception with a heartbeat.
//! - [`poller`]: the per-connection task: poll groups, several devices in turn, writes,
//!   timeouts, rebuilds.
//! - [`write`]: engineering value → write request (inverse scaling, encoding), read-back
//!   confirmation, and the write queue of a device.

pub mod breaker;
pub mod config;
pub mod deadband;
pub mod decode;
pub mod device;
pub mod error;
pub mod plan;
pub mod poller;
pub mod transport;
pub mod types;
pub mod write;

pub use config::{group_by_bus, SerialConfig};
pub use device::{build_buses, BuildError, ModbusDevice, ModbusTag};
pub use error::{ConnectError, LinkError, ModbusError, TransportError};
pub use poller::{run_bus, run_bus_beating, run_device};
pub use types::{ByteOrder, DataType, Table};
pub use write::{write_channel, WriteError, WriteInbox, WriteRequest};
