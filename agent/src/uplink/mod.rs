//! The MQTT uplink: publishes what the outbox holds, deletes it on PUBACK, and hands
//! inbound commands to the command handler.
//!
//! - [`session`]: the task that owns the rumqttc event loop (connect, failover, publish, PUBACK).
//! - [`transport`]: MQTT 3.1.1 or 5 (`mqtt.protocol`) behind one interface for `session`.
//! - [`options`]: rumqttc options from `[mqtt]`: TLS, credentials, Will; clear connection errors.
//! - [`schedule`]: which telemetry goes next: live first, the replay rate-bounded (pure).
//! - [`tracker`]: which outbox entry each packet id carries (pure, unit-tested).
//! - [`topics`]: the topic names of the contract.

pub mod config;
pub mod options;
pub mod schedule;
pub mod session;
pub mod topics;
pub mod tracker;
pub mod transport;

pub use session::{InboundCommand, Uplink, UplinkShutdown};
