//! PLC drivers and simulated plants.
//!
//! - [`modbus`]: the Modbus TCP client driver (polling, decoding, reconnects).
//! - `sim`: simulated plants served over real protocol servers, for the demo and the tests
//!   (feature `sim`, on by default; the gateway build leaves it out).
//! - [`sample`]: what every driver produces.

pub mod backoff;
pub mod config;
pub mod error;
pub mod heartbeat;
pub mod log_limit;
pub mod modbus;
pub mod opcua;
pub mod sample;
#[cfg(feature = "sim")]
pub mod sim;
pub mod validate;

pub use config::{BuildError, DeviceConfig, Protocol, TagConfig};
pub use error::DeviceError;
pub use sample::{DeviceReport, DriverStats, Quality, ReportKind, Sample, Value};
