//! Modbus TCP client driver.
//!
//! - [`types`]: register tables, data types, byte orders.
//! - [`decode`]: registers → engineering values (pure, unit-tested).
//! - [`plan`]: merges tags into as few requests as possible.
//! - [`poller`]: the per-device task: connect, poll, write, time out, rebuild, back off.
//! - [`write`]: engineering value → write request (inverse scaling, encoding), and the
//!   write queue of a device task.

pub mod config;
pub mod decode;
pub mod plan;
pub mod poller;
pub mod types;
pub mod write;

pub use poller::run_device;
pub use types::{ByteOrder, DataType, Table};
pub use write::{write_channel, WriteError, WriteInbox, WriteRequest};
