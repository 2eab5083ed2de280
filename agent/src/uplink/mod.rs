//! The MQTT uplink: publishes what the outbox holds, deletes it on PUBACK.
//!
//! - [`tracker`]: which outbox entry each packet id carries (pure, unit-tested).
//! - [`session`]: the task that owns the rumqttc event loop.
//! - [`topics`]: the topic names of the contract.

pub mod config;
pub mod session;
pub mod topics;
pub mod tracker;

pub use session::{Uplink, UplinkShutdown};
