//! Modbus TCP client driver.
//!
//! - [`types`]: register tables, data types, byte orders.
//! - [`decode`]: registers → engineering values (pure, unit-tested).
//! - [`plan`]: merges tags into as few requests as possible.
//! - [`poller`]: the per-device task: connect, poll, time out, rebuild, back off.

pub mod decode;
pub mod plan;
pub mod poller;
pub mod types;

pub use poller::run_device;
pub use types::{ByteOrder, DataType, Table};
